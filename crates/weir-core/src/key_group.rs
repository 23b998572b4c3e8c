//! Key groups: the unit in which keyed state is stored, routed and redistributed.
//!
//! A key's group is `murmur(key_hash) % max_parallelism`, and subtask `i` of `p` owns a contiguous
//! range of groups. The formulas are Flink's (`KeyGroupRangeAssignment`, `MathUtils.murmurHash`), and
//! [`KeyHash`] reproduces Java's `hashCode` for the key types Weir supports, so that a key lands in
//! the same key group as it would in Flink. Nothing here uses `std::hash`: key groups are persisted.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Lower bound of the default max parallelism (`DEFAULT_LOWER_BOUND_MAX_PARALLELISM`).
pub const DEFAULT_LOWER_BOUND_MAX_PARALLELISM: u32 = 128;
/// Upper bound of any max parallelism (`UPPER_BOUND_MAX_PARALLELISM`, 2^15).
pub const UPPER_BOUND_MAX_PARALLELISM: u32 = 1 << 15;

/// A stable 32-bit hash of a key, equal to Java's `hashCode` of the corresponding Java value.
///
/// Implemented for the key types jobs use; a composite key hashes like Flink's `Tuple2`
/// (`31 * h(a) + h(b)`). It must never change between versions: key groups depend on it.
pub trait KeyHash {
    fn key_hash(&self) -> i32;

    /// Whether `key_hash` tells these keys apart well enough to find them in memory too, so a
    /// record hashes its key once: for strings, whose Java hash mixes every character (as Flink's
    /// heap state finds them by `hashCode`), and for 32-bit integers, which it maps one to one.
    /// Not for keys whose Java hash folds wider values together (`Long`'s `v ^ v >>> 32` gives
    /// every `(x << 32) | x` the same hash) or combines fields (`31 * h(a) + h(b)`): those are
    /// hashed again, by their bytes.
    const LOCATES_IN_MEMORY: bool = false;

    /// Whether two keys are the same key: `==`, except that strings compare their bytes inline
    /// (the heap state backend compares the current key on every lookup, and a call into the C
    /// library's `memcmp` for a few bytes cost the reference benchmark about 8 % of its time).
    #[inline]
    fn same_key(&self, other: &Self) -> bool
    where
        Self: PartialEq,
    {
        self == other
    }
}

/// Byte equality without a library call for the short keys jobs mostly use.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]));
    match n {
        // Two overlapping reads cover every byte.
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

impl KeyHash for i32 {
    const LOCATES_IN_MEMORY: bool = true;
    fn key_hash(&self) -> i32 {
        *self
    }
}

impl KeyHash for u32 {
    const LOCATES_IN_MEMORY: bool = true;
    fn key_hash(&self) -> i32 {
        *self as i32
    }
}

impl KeyHash for i64 {
    fn key_hash(&self) -> i32 {
        (*self ^ ((*self as u64) >> 32) as i64) as i32
    }
}

impl KeyHash for u64 {
    fn key_hash(&self) -> i32 {
        (*self as i64).key_hash()
    }
}

impl KeyHash for bool {
    fn key_hash(&self) -> i32 {
        if *self {
            1231
        } else {
            1237
        }
    }
}

impl KeyHash for str {
    const LOCATES_IN_MEMORY: bool = true;
    /// Java's `String.hashCode`: over UTF-16 code units, `h = 31 * h + unit`.
    /// One pass over the bytes for ASCII (its bytes are its own UTF-16 code units), noting
    /// whether any byte was not ASCII; only such strings are hashed again, by code unit. (Four
    /// bytes a step, one multiplication of `h` per step, took 1 % of the reference benchmark's
    /// instructions and no measurable time: batched records overlap this chain already.)
    #[inline]
    fn key_hash(&self) -> i32 {
        let (mut h, mut any_high) = (0i32, 0u8);
        for &b in self.as_bytes() {
            h = h.wrapping_mul(31).wrapping_add(b as i32);
            any_high |= b;
        }
        if any_high < 0x80 {
            return h;
        }
        java_string_hash_utf16(self)
    }
    #[inline]
    fn same_key(&self, other: &Self) -> bool {
        same_bytes(self.as_bytes(), other.as_bytes())
    }
}

/// Java's `String.hashCode` by its definition, over UTF-16 code units.
fn java_string_hash_utf16(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32))
}

impl KeyHash for String {
    const LOCATES_IN_MEMORY: bool = true;
    #[inline]
    fn key_hash(&self) -> i32 {
        self.as_str().key_hash()
    }
    #[inline]
    fn same_key(&self, other: &Self) -> bool {
        same_bytes(self.as_bytes(), other.as_bytes())
    }
}

impl<T: KeyHash + ?Sized> KeyHash for &T {
    const LOCATES_IN_MEMORY: bool = T::LOCATES_IN_MEMORY;
    fn key_hash(&self) -> i32 {
        (**self).key_hash()
    }
}

impl<A: KeyHash, B: KeyHash> KeyHash for (A, B) {
    fn key_hash(&self) -> i32 {
        self.0.key_hash().wrapping_mul(31).wrapping_add(self.1.key_hash())
    }
}

impl<A: KeyHash, B: KeyHash, C: KeyHash> KeyHash for (A, B, C) {
    fn key_hash(&self) -> i32 {
        let h = self.0.key_hash().wrapping_mul(31).wrapping_add(self.1.key_hash());
        h.wrapping_mul(31).wrapping_add(self.2.key_hash())
    }
}

/// Flink's `MathUtils.murmurHash(int)`: murmur3 finalisation of one 32-bit word, made non-negative.
pub fn murmur_hash(code: i32) -> i32 {
    let mut h = (code as u32).wrapping_mul(0xcc9e_2d51);
    h = h.rotate_left(15);
    h = h.wrapping_mul(0x1b87_3593);
    h = h.rotate_left(13);
    h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
    h ^= 4;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    let code = h as i32;
    if code >= 0 {
        code
    } else if code != i32::MIN {
        -code
    } else {
        0
    }
}

/// The key group of a key hash for a given max parallelism.
#[inline]
pub fn key_group_for_hash(key_hash: i32, max_parallelism: u32) -> u32 {
    let hash = murmur_hash(key_hash) as u32;
    // The same number as `%`, without a division on every record for the usual power of two.
    if max_parallelism.is_power_of_two() {
        hash & (max_parallelism - 1)
    } else {
        hash % max_parallelism
    }
}

/// The key group of a key.
#[inline]
pub fn assign_to_key_group<K: KeyHash + ?Sized>(key: &K, max_parallelism: u32) -> u32 {
    key_group_for_hash(key.key_hash(), max_parallelism)
}

/// The subtask that owns a key group: `kg * p / max_p`. Routing uses exactly this, so routing and
/// state ownership always agree.
#[inline]
pub fn operator_index_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    let scaled = key_group as u64 * parallelism as u64;
    if max_parallelism.is_power_of_two() {
        (scaled >> max_parallelism.trailing_zeros()) as u32
    } else {
        (scaled / max_parallelism as u64) as u32
    }
}

/// Flink's default max parallelism for an operator of parallelism `p`:
/// `min(max(roundUpToPowerOfTwo(p + p/2), 128), 32768)`.
pub fn default_max_parallelism(parallelism: u32) -> u32 {
    let wanted = (parallelism as u64) + (parallelism as u64) / 2;
    let rounded = wanted.max(1).next_power_of_two();
    rounded.clamp(DEFAULT_LOWER_BOUND_MAX_PARALLELISM as u64, UPPER_BOUND_MAX_PARALLELISM as u64) as u32
}

/// An inclusive range of key groups `[start, end]`; empty when `end < start`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    pub start: u32,
    /// Number of key groups in the range (so an empty range is representable without negatives).
    pub count: u32,
}

impl KeyGroupRange {
    pub const EMPTY: KeyGroupRange = KeyGroupRange { start: 0, count: 0 };

    /// The range `[start, end]`, both inclusive.
    pub fn inclusive(start: u32, end: u32) -> Self {
        if end < start {
            Self::EMPTY
        } else {
            KeyGroupRange { start, count: end - start + 1 }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Last key group of the range (inclusive). Meaningless for an empty range.
    pub fn end(&self) -> u32 {
        self.start + self.count.saturating_sub(1)
    }

    pub fn contains(&self, key_group: u32) -> bool {
        key_group >= self.start && key_group - self.start < self.count
    }

    /// Index of a key group inside this range.
    pub fn offset_of(&self, key_group: u32) -> Option<usize> {
        self.contains(key_group).then(|| (key_group - self.start) as usize)
    }

    /// Whether every key group of `other` is in this range.
    pub fn contains_range(&self, other: &KeyGroupRange) -> bool {
        other.is_empty() || (other.start >= self.start && other.start + other.count <= self.start + self.count)
    }

    pub fn intersection(&self, other: &KeyGroupRange) -> KeyGroupRange {
        if self.is_empty() || other.is_empty() {
            return Self::EMPTY;
        }
        let start = self.start.max(other.start);
        let end = self.end().min(other.end());
        KeyGroupRange::inclusive(start, end)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> {
        self.start..self.start + self.count
    }

    /// This range in `n` contiguous chunks of nearly equal size, in order (fewer when it has
    /// fewer key groups; none when it is empty): how a subtask spreads work over its cores.
    pub fn split(&self, n: u32) -> Vec<KeyGroupRange> {
        let n = n.clamp(1, self.count.max(1));
        (0..n)
            .map(|i| {
                let from = self.start + (self.count as u64 * i as u64 / n as u64) as u32;
                let to = self.start + (self.count as u64 * (i as u64 + 1) / n as u64) as u32;
                KeyGroupRange { start: from, count: to - from }
            })
            .filter(|c| c.count > 0)
            .collect()
    }
}

impl fmt::Debug for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("[]")
        } else {
            write!(f, "[{}, {}]", self.start, self.end())
        }
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Errors in parallelism settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParallelismError {
    #[error("max parallelism {0} is not in the valid bounds 1..={UPPER_BOUND_MAX_PARALLELISM}")]
    MaxParallelismOutOfBounds(u32),
    #[error("parallelism {parallelism} is larger than max parallelism {max_parallelism}; lower the parallelism or raise the max parallelism")]
    ParallelismAboveMax { parallelism: u32, max_parallelism: u32 },
    #[error("parallelism must be at least 1")]
    ZeroParallelism,
}

/// Checks a (parallelism, max parallelism) pair.
pub fn check_parallelism(parallelism: u32, max_parallelism: u32) -> Result<(), ParallelismError> {
    if parallelism == 0 {
        return Err(ParallelismError::ZeroParallelism);
    }
    if max_parallelism == 0 || max_parallelism > UPPER_BOUND_MAX_PARALLELISM {
        return Err(ParallelismError::MaxParallelismOutOfBounds(max_parallelism));
    }
    if parallelism > max_parallelism {
        return Err(ParallelismError::ParallelismAboveMax { parallelism, max_parallelism });
    }
    Ok(())
}

/// The key groups owned by subtask `index` of `parallelism`:
/// `[(i*maxP + p - 1) / p, ((i+1)*maxP - 1) / p]`.
pub fn key_group_range_for_subtask(max_parallelism: u32, parallelism: u32, index: u32) -> KeyGroupRange {
    assert!(
        parallelism >= 1 && max_parallelism >= parallelism && index < parallelism,
        "invalid key-group assignment: index {index}, parallelism {parallelism}, max parallelism {max_parallelism}"
    );
    let (m, p, i) = (max_parallelism as u64, parallelism as u64, index as u64);
    let start = (i * m).div_ceil(p);
    let end = ((i + 1) * m - 1) / p;
    KeyGroupRange::inclusive(start as u32, end as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ranges(max_p: u32, p: u32) -> Vec<(u32, u32)> {
        (0..p)
            .map(|i| {
                let r = key_group_range_for_subtask(max_p, p, i);
                (r.start, r.end())
            })
            .collect()
    }

    #[test]
    fn a_range_splits_into_contiguous_chunks_covering_it_once() {
        for (start, count, n) in [(0, 128, 2), (5, 7, 3), (10, 3, 8), (0, 1, 4), (3, 0, 2), (0, 32768, 8)] {
            let range = KeyGroupRange { start, count };
            let chunks = range.split(n);
            let groups: Vec<u32> = chunks.iter().flat_map(|c| c.iter()).collect();
            assert_eq!(groups, range.iter().collect::<Vec<_>>(), "{range:?} in {n}");
            assert!(chunks.len() as u32 <= n.min(count.max(1)));
            let sizes: Vec<u32> = chunks.iter().map(|c| c.count).collect();
            assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn murmur_vectors_from_appendix_a() {
        let cases = [
            (0, 593689054),
            (1, 68075478),
            (2, 1085422463),
            (3, 847579505),
            (4, 1889779975),
            (5, 236698494),
            (6, 975490194),
            (7, 1343918321),
            (8, 1822472975),
            (9, 101886131),
            (i32::MIN, 1718298732),
            (-1, 1982413648),
        ];
        for (code, expected) in cases {
            assert_eq!(murmur_hash(code), expected, "murmurHash({code})");
        }
    }

    #[test]
    fn integer_key_groups_from_appendix_a() {
        // (key, kg for maxP 128, subtask for p=4, kg for maxP 13)
        let cases = [
            (0, 94, 2, 10),
            (1, 86, 2, 3),
            (2, 127, 3, 8),
            (3, 113, 3, 6),
            (4, 7, 0, 5),
            (5, 126, 3, 6),
            (6, 18, 0, 3),
            (7, 113, 3, 5),
            (8, 15, 0, 11),
            (9, 51, 1, 9),
        ];
        for (key, kg128, sub4, kg13) in cases {
            let key: i32 = key;
            let kg = assign_to_key_group(&{ key }, 128);
            assert_eq!(kg, kg128, "key {key}");
            assert_eq!(operator_index_for_key_group(128, 4, kg), sub4, "key {key}");
            assert_eq!(assign_to_key_group(&{ key }, 13), kg13, "key {key}");
        }
    }

    #[test]
    fn string_and_long_keys_from_appendix_a() {
        assert_eq!("a".key_hash(), 97);
        assert_eq!("hello".key_hash(), 99162322);
        assert_eq!("user-42".key_hash(), -147182656);
        let strings = [("a", 81, 2), ("b", 22, 0), ("hello", 35, 1), ("user-42", 20, 0), ("", 94, 2)];
        for (key, kg, sub) in strings {
            let g = assign_to_key_group(key, 128);
            assert_eq!(g, kg, "key {key:?}");
            assert_eq!(operator_index_for_key_group(128, 4, g), sub, "key {key:?}");
            assert_eq!(assign_to_key_group(&key.to_string(), 128), kg);
        }
        let longs: [(i64, u32, u32); 3] = [(42, 29, 0), (1 << 32, 86, 2), (-1, 94, 2)];
        for (key, kg, sub3) in longs {
            let g = assign_to_key_group(&key, 128);
            assert_eq!(g, kg, "long {key}");
            assert_eq!(operator_index_for_key_group(128, 3, g), sub3, "long {key}");
        }
        assert_eq!(assign_to_key_group(&42u64, 128), 29);
    }

    #[test]
    fn ranges_from_appendix_a() {
        assert_eq!(ranges(128, 1), vec![(0, 127)]);
        assert_eq!(ranges(128, 3), vec![(0, 42), (43, 85), (86, 127)]);
        assert_eq!(ranges(128, 4), vec![(0, 31), (32, 63), (64, 95), (96, 127)]);
        assert_eq!(ranges(13, 2), vec![(0, 6), (7, 12)]);
        assert_eq!(ranges(13, 4), vec![(0, 3), (4, 6), (7, 9), (10, 12)]);
        assert_eq!(ranges(13, 5), vec![(0, 2), (3, 5), (6, 7), (8, 10), (11, 12)]);
        assert_eq!(ranges(10, 3), vec![(0, 3), (4, 6), (7, 9)]);
        assert_eq!(
            ranges(32768, 7),
            vec![
                (0, 4681),
                (4682, 9362),
                (9363, 14043),
                (14044, 18724),
                (18725, 23405),
                (23406, 28086),
                (28087, 32767)
            ]
        );
    }

    #[test]
    fn default_max_parallelism_from_appendix_a() {
        for p in [1, 2, 64, 85] {
            assert_eq!(default_max_parallelism(p), 128, "p={p}");
        }
        for p in [86, 100, 171] {
            assert_eq!(default_max_parallelism(p), 256, "p={p}");
        }
        assert_eq!(default_max_parallelism(1000), 2048);
        for p in [21845, 21846, 32768] {
            assert_eq!(default_max_parallelism(p), 32768, "p={p}");
        }
    }

    #[test]
    fn java_string_hash_uses_utf16_units() {
        // U+1F600 is the surrogate pair D83D DE00 in Java: 31 * 0xD83D + 0xDE00.
        assert_eq!("\u{1F600}".key_hash(), 31 * 0xD83D + 0xDE00);
        assert_eq!(("a", 1i32).key_hash(), 31 * 97 + 1);
    }

    #[test]
    fn parallelism_checks() {
        assert!(check_parallelism(4, 128).is_ok());
        assert_eq!(
            check_parallelism(5, 4),
            Err(ParallelismError::ParallelismAboveMax { parallelism: 5, max_parallelism: 4 })
        );
        assert!(check_parallelism(1, 40000).is_err());
        assert!(check_parallelism(0, 10).is_err());
    }

    proptest! {
        /// The power-of-two shortcuts compute Flink's formulas exactly.
        #[test]
        fn shortcuts_equal_the_formulas(hash in any::<i32>(), shift in 0u32..=15, p_seed in any::<u32>()) {
            let max_p = 1u32 << shift;
            prop_assert_eq!(key_group_for_hash(hash, max_p), (murmur_hash(hash) as u32) % max_p);
            let p = 1 + p_seed % max_p;
            let kg = key_group_for_hash(hash, max_p);
            prop_assert_eq!(operator_index_for_key_group(max_p, p, kg), ((kg as u64 * p as u64) / max_p as u64) as u32);
        }

        /// The subtask that routing picks for a key is the one whose range owns its key group.
        #[test]
        fn routing_and_ownership_agree(key in any::<i64>(), max_p in 1u32..=4096, p_seed in any::<u32>()) {
            let p = 1 + p_seed % max_p;
            let kg = assign_to_key_group(&key, max_p);
            prop_assert!(kg < max_p);
            let owner = operator_index_for_key_group(max_p, p, kg);
            prop_assert!(owner < p);
            prop_assert!(key_group_range_for_subtask(max_p, p, owner).contains(kg));
        }

        /// Subtask ranges partition `[0, max_p)`: contiguous, disjoint, none empty, in order.
        #[test]
        fn ranges_partition_all_key_groups(max_p in 1u32..=32768, p_seed in any::<u32>()) {
            let p = 1 + p_seed % max_p.min(512);
            let mut next = 0;
            for i in 0..p {
                let r = key_group_range_for_subtask(max_p, p, i);
                prop_assert!(!r.is_empty());
                prop_assert_eq!(r.start, next);
                for kg in [r.start, r.end()] {
                    prop_assert_eq!(operator_index_for_key_group(max_p, p, kg), i);
                }
                next = r.end() + 1;
            }
            prop_assert_eq!(next, max_p);
        }

        /// The one pass over the bytes of ASCII text is Java's definition (over UTF-16 units).
        #[test]
        fn ascii_string_hash_is_javas(ascii in "[ -~]{0,40}") {
            prop_assert_eq!(ascii.as_str().key_hash(), java_string_hash_utf16(&ascii));
        }

        #[test]
        fn string_keys_route_to_their_owner(key in ".*", max_p in 1u32..=1024, p_seed in any::<u32>()) {
            let p = 1 + p_seed % max_p;
            let kg = assign_to_key_group(key.as_str(), max_p);
            let owner = operator_index_for_key_group(max_p, p, kg);
            prop_assert!(key_group_range_for_subtask(max_p, p, owner).contains(kg));
        }
    }
}
