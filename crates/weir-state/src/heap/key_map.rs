//! One key group's entries of one state: a hash table of `(key, value)` looked up by a hash the
//! current key's scope computed once, so a record that reads and then writes its state (`value()`
//! then `update()`) hashes its key once.
//!
//! The hash is in memory only, never persisted (key groups use
//! [`weir_core::key_group::KeyHash`]): for keys whose Java hash tells them apart
//! ([`KeyHash::LOCATES_IN_MEMORY`]: strings, 32-bit integers) it is that hash, already computed
//! for the key group, spread over 64 bits; for other keys `FxHash` of their `std::hash::Hash`.

use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use weir_core::key_group::KeyHash;

#[derive(Clone)]
pub(crate) struct KeyMap<K, V> {
    table: HashTable<(K, V)>,
    /// The table's occupied buckets in the order of their keys' bytes, once a snapshot has sorted
    /// them: the next snapshot of the same keys writes in that order without sorting again (the
    /// sort was most of a canonical snapshot's time). See [`KeyOrderPlace`].
    order: KeyOrderTracking,
}

/// The place of a map's key order (see [`KeyOrderPlace`]) and the buckets whose keys came or went
/// since its keys (kept only while there is a place, and only while they are few).
#[derive(Clone, Default)]
struct KeyOrderTracking {
    place: Option<Arc<KeyOrderPlace>>,
    changes: KeyChanges,
}

impl KeyOrderTracking {
    fn forget(&mut self) {
        *self = KeyOrderTracking::default();
    }

    /// Notes that the key in `bucket` came (`added`) or went, leaving `len` keys, or forgets the
    /// order when the changes are too many to be worth merging.
    #[cold]
    fn key_changed(&mut self, bucket: usize, added: bool, len: usize) {
        match u32::try_from(bucket) {
            Ok(bucket) if !too_many_changes(self.changes.len() + 1, len) => {
                if added { &mut self.changes.added } else { &mut self.changes.removed }.push(bucket);
            }
            _ => self.forget(),
        }
    }
}

/// Where the snapshots of one set of keys keep its order. Bucket indices hold while the table
/// neither grows nor rehashes (values change in place, a key that comes takes a free bucket, a
/// key that goes frees its own); the map drops its place when the table might move its entries.
/// The copies of a map share it: a snapshot freezes the map, the task copies it on its next
/// write, and the order the snapshot records afterwards serves the task's copy as well (a copy
/// keeps every entry in its bucket). A snapshot checks an order against the keys as it writes
/// them.
///
/// Keys that came or went since a recorded order are merged into it by the next snapshot
/// (`since`): sorting the few new keys and leaving out the gone ones, instead of sorting all.
/// Recording costs a sorting snapshot about a seventh more, so a snapshot records only where keys
/// held still or changed little since the snapshot before (`record`): a key group whose keys
/// change wholesale between every two checkpoints never pays for an order it cannot use, and one
/// whose keys settle or change slowly is written in order from its third snapshot on.
#[derive(Default)]
pub(crate) struct KeyOrderPlace {
    record: AtomicBool,
    order: OnceLock<Box<KeyOrder>>,
    /// How these keys differ from those of a place whose order a snapshot recorded; taken by the
    /// first snapshot that writes the key group, so that the place before is freed then.
    since: Mutex<Option<KeysSince>>,
}

/// Buckets whose keys came (`added`: a bucket may be listed twice, or its key gone again) or went
/// (`removed`) since the keys of a recorded order.
#[derive(Clone, Default)]
pub(crate) struct KeyChanges {
    pub(crate) added: Vec<u32>,
    pub(crate) removed: Vec<u32>,
}

impl KeyChanges {
    fn len(&self) -> usize {
        self.added.len() + self.removed.len()
    }
}

/// A place's keys as those of `base`, whose order a snapshot recorded, with `changes`.
pub(crate) struct KeysSince {
    pub(crate) base: Arc<KeyOrderPlace>,
    pub(crate) changes: KeyChanges,
}

impl KeysSince {
    /// The order recorded for the keys before the changes.
    pub(crate) fn base_order(&self) -> Option<&KeyOrder> {
        self.base.order.get().map(|o| &**o)
    }
}

/// Changes since a recorded order beyond which merging them is not worth keeping them: past
/// half of the keys, a sort is about as fast.
fn too_many_changes(changes: usize, len: usize) -> bool {
    changes > len / 2
}

impl<K, V> Default for KeyMap<K, V> {
    fn default() -> Self {
        KeyMap { table: HashTable::new(), order: KeyOrderTracking::default() }
    }
}

/// The in-memory hash of a key.
#[inline]
pub(crate) fn hash_key<K: Hash + KeyHash + ?Sized>(key: &K) -> u64 {
    hash_key_with(key, || key.key_hash())
}

/// [`hash_key`], given the key's `key_hash` when it is at hand: a string key is then hashed once
/// per record (its `FxHash` was about 2 % of the reference benchmark's instructions).
#[inline]
pub(crate) fn hash_key_with<K: Hash + KeyHash + ?Sized>(key: &K, key_hash: impl FnOnce() -> i32) -> u64 {
    if K::LOCATES_IN_MEMORY {
        spread(key_hash())
    } else {
        rustc_hash::FxBuildHasher.hash_one(key)
    }
}

/// A 32-bit hash over 64 bits. The hash table takes a key's bucket from the low bits and its tag
/// from the top 7: the multiplication carries every bit of the hash into the top ones, and the
/// fold brings those down into the low ones.
#[inline]
fn spread(key_hash: i32) -> u64 {
    let p = (key_hash as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    p ^ (p >> 32)
}

impl<K: Hash + Eq + KeyHash, V> KeyMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.table.iter().map(|(k, v)| (k, v))
    }

    /// The value of `key`, whose hash is `hash`.
    #[inline]
    pub(crate) fn get(&self, hash: u64, key: &K) -> Option<&V> {
        self.table.find(hash, |(k, _)| k.same_key(key)).map(|(_, v)| v)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, hash: u64, key: &K) -> Option<&mut V> {
        self.table.find_mut(hash, |(k, _)| k.same_key(key)).map(|(_, v)| v)
    }

    /// The value of `key`, inserted with `init` when it has none; and whether it was inserted.
    #[inline]
    pub(crate) fn get_or_insert_with(&mut self, hash: u64, key: &K, init: impl FnOnce() -> V) -> (&mut V, bool)
    where
        K: Clone,
    {
        self.before_growing();
        let len_with_it = self.table.len() + 1;
        match self.table.entry(hash, |(k, _)| k.same_key(key), |(k, _)| hash_key(k)) {
            hashbrown::hash_table::Entry::Occupied(found) => (&mut found.into_mut().1, false),
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                let inserted = vacant.insert((key.clone(), init()));
                let bucket = inserted.bucket_index();
                let value = &mut inserted.into_mut().1;
                if self.order.place.is_some() {
                    self.order.key_changed(bucket, true, len_with_it);
                }
                (value, true)
            }
        }
    }

    /// Inserts `key`, which must not be in the map yet.
    #[inline]
    pub(crate) fn insert_new(&mut self, hash: u64, key: K, value: V) {
        self.before_growing();
        let bucket = self.table.insert_unique(hash, (key, value), |(k, _)| hash_key(k)).bucket_index();
        if self.order.place.is_some() {
            self.order.key_changed(bucket, true, self.table.len());
        }
    }

    /// Called before anything that may insert: the table then makes room first, whether it
    /// inserts or not, and when it has none left (as many entries as its capacity) it grows or
    /// rehashes, moving its entries to other buckets.
    #[inline]
    fn before_growing(&mut self) {
        if self.order.place.is_some() && self.table.len() == self.table.capacity() {
            self.order.forget();
        }
    }

    /// Inserts or replaces.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: K, value: V) {
        let hash = hash_key(&key);
        self.insert_hashed(hash, key, value);
    }

    fn insert_hashed(&mut self, hash: u64, key: K, value: V) {
        match self.get_mut(hash, &key) {
            Some(v) => *v = value,
            None => self.insert_new(hash, key, value),
        }
    }

    /// Inserts or replaces every `(key, value)` of `entries`, whose hashes are `hashes`: a
    /// restore's. Each insert into a table larger than a core's cache misses it where the key's
    /// probe starts (two fifths of a restore's time went there), so the table is sized for all of
    /// them first (growing to them rehashed every entry about twice) and the buckets where later
    /// keys' probes start are asked for ahead.
    pub(crate) fn insert_all(&mut self, hashes: &[u64], entries: impl IntoIterator<Item = (K, V)>) {
        self.order.forget();
        self.table.reserve(hashes.len(), |(k, _)| hash_key(k));
        let last_bucket = self.table.num_buckets().saturating_sub(1);
        let mut prefetch: Option<BucketPrefetch<(K, V)>> = None;
        for (i, ((key, value), &hash)) in entries.into_iter().zip(hashes).enumerate() {
            if let (Some(buckets), Some(&ahead)) = (&prefetch, hashes.get(i + INSERTS_AHEAD)) {
                buckets.prefetch((ahead as usize & last_bucket) as u32);
            }
            self.insert_hashed(hash, key, value);
            if prefetch.is_none() {
                prefetch = self.bucket_prefetch();
            }
        }
    }

    pub(crate) fn remove(&mut self, hash: u64, key: &K) -> Option<V> {
        let entry = self.table.find_entry(hash, |(k, _)| k.same_key(key)).ok()?;
        let bucket = entry.bucket_index();
        let value = entry.remove().0 .1;
        if self.order.place.is_some() {
            self.order.key_changed(bucket, false, self.table.len());
        }
        Some(value)
    }
}

/// Inserts ahead of the one being made whose buckets [`KeyMap::insert_all`] asks the cache for.
const INSERTS_AHEAD: usize = 16;

/// The buckets of a map in key order, as [`KeyMap::key_order`] hands them out.
pub(crate) type KeyOrder = [u32];

impl<K, V> KeyMap<K, V> {
    /// Called as a snapshot freezes the map. A map whose keys held still since the snapshot
    /// before keeps its place, now worth recording an order for; one whose keys changed a little
    /// since a recorded order gets a place that merges the changes into it; one whose keys
    /// changed a little otherwise gets a place to record an order in; one without (its keys
    /// never snapshotted, or changed much) gets a place, which the next snapshot finds if its
    /// keys then hold still or change little.
    pub(crate) fn freezing(&mut self) {
        let KeyOrderTracking { place, changes } = std::mem::take(&mut self.order);
        let place = match place {
            Some(place) if changes.len() == 0 => {
                place.record.store(true, Ordering::Relaxed);
                place
            }
            Some(base) => {
                let since = base.order.get().is_some().then(|| KeysSince { base, changes });
                Arc::new(KeyOrderPlace {
                    record: AtomicBool::new(true),
                    since: Mutex::new(since),
                    ..Default::default()
                })
            }
            None => Arc::default(),
        };
        self.order.place = Some(place);
    }

    /// [`KeyMap::freezing`], for a map a snapshot froze before and nothing has written since:
    /// its keys held still.
    pub(crate) fn freezing_again(&self) {
        if let Some(place) = &self.order.place {
            place.record.store(true, Ordering::Relaxed);
        }
    }

    /// The buckets in key order, when a snapshot of these keys has sorted them (for a map a
    /// snapshot froze: one written since may hold keys that came or went).
    pub(crate) fn key_order(&self) -> Option<&KeyOrder> {
        self.order.place.as_ref()?.order.get().map(|o| &**o)
    }

    /// How the keys differ from those of an order a snapshot recorded, if they do and no snapshot
    /// has taken that yet.
    pub(crate) fn take_keys_since(&self) -> Option<KeysSince> {
        let place = self.order.place.as_ref()?;
        place.since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    /// Whether a snapshot that sorts the map should record the order for the next.
    pub(crate) fn key_order_wanted(&self) -> bool {
        self.order.place.as_ref().is_some_and(|p| p.record.load(Ordering::Relaxed) && p.order.get().is_none())
    }

    /// Records the buckets in key order (those [`KeyMap::buckets`] gave, sorted); the first
    /// order recorded for these keys stands.
    pub(crate) fn set_key_order(&self, order: Box<KeyOrder>) {
        if let Some(place) = &self.order.place {
            let _ = place.order.set(order);
        }
    }

    /// Every entry with its bucket index (`None` past `u32` buckets, which a key group's block,
    /// at most 4 GiB, never reaches).
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (Option<u32>, &K, &V)> {
        self.table.iter_buckets().filter_map(|b| {
            let (k, v) = self.table.get_bucket(b)?;
            Some((u32::try_from(b).ok(), k, v))
        })
    }

    /// The entry in `bucket`, if it holds one.
    #[inline]
    pub(crate) fn entry_at(&self, bucket: u32) -> Option<(&K, &V)> {
        self.table.get_bucket(bucket as usize).map(|(k, v)| (k, v))
    }

    /// Where the entries and control bytes of this table's buckets lie, for a reader that
    /// knows which buckets it reads next (see [`BucketPrefetch`]); `None` for an empty table.
    pub(crate) fn bucket_prefetch(&self) -> Option<BucketPrefetch<(K, V)>> {
        let known = self.table.iter_buckets().next()?;
        let entry = self.table.get_bucket(known)? as *const (K, V);
        // Entry `i` lies `i` entries below entry 0, which lies just below the control bytes.
        let entry_zero = entry.wrapping_add(known);
        Some(BucketPrefetch { entry_zero, control_zero: entry_zero.wrapping_add(1).cast() })
    }
}

/// Asks the cache for buckets of a table ahead of reading them: a key group's table outgrows a
/// core's cache, and reading it in key order waits on a miss for most entries, twice (the
/// bucket's control byte, then its entry). The addresses follow hashbrown's layout (entries
/// stored downwards from the control bytes, which are one byte per bucket), computed without
/// reading anything: finding them through the table's own lookup read the control byte, the very
/// miss to avoid (over a third of writing in a known order). Should the layout ever differ, the
/// prefetches fetch the wrong lines and reading is slower, never wrong: a prefetch only hints
/// (`entries_lie_where_bucket_prefetch_says` checks the entries' addresses).
#[derive(Clone, Copy)]
pub(crate) struct BucketPrefetch<T> {
    entry_zero: *const T,
    control_zero: *const u8,
}

impl<T> BucketPrefetch<T> {
    /// Where bucket `bucket`'s entry would lie (an address only; never read through).
    fn entry(&self, bucket: u32) -> *const T {
        self.entry_zero.wrapping_sub(bucket as usize)
    }

    #[inline]
    pub(crate) fn prefetch(&self, bucket: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let control = self.control_zero.wrapping_add(bucket as usize);
            // SAFETY: `sse`, which the intrinsic is declared with, is part of every x86-64
            // target; a prefetch is a hint that reads nothing into the program and cannot fault,
            // whatever the address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(self.entry(bucket).cast());
                _mm_prefetch::<_MM_HINT_T0>(control.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = bucket;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_lie_where_bucket_prefetch_says() {
        let mut map = KeyMap::<u64, [u8; 24]>::default();
        assert!(map.bucket_prefetch().is_none());
        for k in 0..5000u64 {
            map.insert(k, [k as u8; 24]);
        }
        let cache = map.bucket_prefetch().expect("a table with entries");
        for (bucket, k, _) in map.buckets() {
            let bucket = bucket.expect("fewer than 2^32 buckets");
            let entry = map.table.get_bucket(bucket as usize).expect("an occupied bucket");
            assert_eq!(cache.entry(bucket), entry as *const (u64, [u8; 24]), "key {k}");
        }
    }

    /// A restore's inserts, made all at once, hold what inserting one by one holds: a key given
    /// twice keeps its last value, a key the map held is replaced, and the map forgets its order
    /// (making room may move its entries).
    #[test]
    fn inserting_all_at_once_holds_what_inserting_each_holds() {
        let mut one_by_one = KeyMap::<u64, u64>::default();
        let mut at_once = KeyMap::<u64, u64>::default();
        for k in 0..300u64 {
            one_by_one.insert(k, k);
            at_once.insert(k, k);
        }
        at_once.freezing();
        assert!(at_once.order.place.is_some());
        let entries: Vec<(u64, u64)> = (200..5000u64).chain(4000..4100).map(|k| (k, k * 7)).collect();
        let hashes: Vec<u64> = entries.iter().map(|(k, _)| hash_key(k)).collect();
        for &(k, v) in &entries {
            one_by_one.insert(k, v);
        }
        at_once.insert_all(&hashes, entries);
        assert!(at_once.order.place.is_none(), "order forgotten");
        let sorted = |m: &KeyMap<u64, u64>| {
            let mut all: Vec<(u64, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            all.sort();
            all
        };
        assert_eq!(at_once.len(), 5000);
        assert_eq!(sorted(&at_once), sorted(&one_by_one));
    }

    /// A map at its capacity grows on its next lookup-or-insert, even of a key it holds, moving
    /// its entries: the order is forgotten before. Short of its capacity, keys that come and go
    /// are kept as changes to merge, until they outnumber half of the keys.
    #[test]
    fn an_order_outlives_keys_that_come_and_go_but_not_the_table_growing() {
        let mut map = KeyMap::<u64, u64>::default();
        let mut k = 0;
        while map.len() < 100 || map.len() < map.table.capacity() {
            map.insert(k, k);
            k += 1;
        }
        map.freezing();
        map.freezing();
        map.set_key_order((0..map.len() as u32).collect());
        let buckets = map.table.num_buckets();
        assert_eq!(*map.get_or_insert_with(hash_key(&0u64), &0, || 0).0, 0);
        assert!(map.order.place.is_none() && map.table.num_buckets() > buckets, "grown, order forgotten");

        let mut map = KeyMap::<u64, u64>::default();
        (0..200).for_each(|k| map.insert(k, k));
        assert!(map.table.capacity() >= 221);
        map.freezing();
        assert!(map.order.place.is_some());
        map.get_or_insert_with(hash_key(&500u64), &500, || 1);
        map.remove(hash_key(&3u64), &3);
        assert_eq!((map.order.changes.added.len(), map.order.changes.removed.len()), (1, 1));
        for k in 1000..1020 {
            map.insert(k, k);
        }
        assert!(map.order.place.is_some(), "22 changes among 220 keys");
        for k in 10..110u64 {
            map.remove(hash_key(&k), &k);
        }
        assert!(map.order.place.is_none() && map.order.changes.len() == 0, "too many changes to merge");
    }

    #[test]
    fn entries_are_found_by_their_hash_through_growth_and_removal() {
        let mut map = KeyMap::<String, u32>::default();
        for i in 0..1000 {
            let k = format!("k{i}");
            *map.get_or_insert_with(hash_key(&k), &k, || 0).0 += i;
        }
        map.insert("k7".to_string(), 70);
        assert_eq!(map.len(), 1000);
        assert_eq!(map.get(hash_key("k7"), &"k7".to_string()), Some(&70));
        assert_eq!(map.remove(hash_key("k8"), &"k8".to_string()), Some(8));
        assert_eq!(map.get(hash_key("k8"), &"k8".to_string()), None);
        assert_eq!(map.iter().map(|(_, v)| *v as u64).sum::<u64>(), (0..1000u64).sum::<u64>() - 7 - 8 + 70);
    }

    /// A record's key is located with the hash its key group came from; the table rehashes its
    /// keys from the keys alone. Both must agree for every key type.
    #[test]
    fn the_hash_a_record_locates_with_is_the_hash_the_table_rehashes_with() {
        fn agree<K: Hash + KeyHash>(keys: impl IntoIterator<Item = K>) {
            for k in keys {
                assert_eq!(hash_key_with(&k, || k.key_hash()), hash_key(&k));
            }
        }
        agree((0..1000).map(|i| format!("w{i}")));
        agree(["", "é", "日本"].map(String::from));
        agree(-500..500i32);
        agree(0..1000u32);
        agree(0..1000u64);
        agree((0..1000).map(|i| (i as u64, format!("{i}"))));
    }

    /// Keys of one key group (which share the low bits of their murmur hash, not of their Java
    /// hash) spread over buckets and tags as random hashes would.
    #[test]
    fn string_keys_of_one_key_group_spread_over_buckets_and_tags() {
        let keys: Vec<String> = (0..1_000_000)
            .map(|i| format!("user-{i}"))
            .filter(|k| weir_core::key_group::assign_to_key_group(k, 128) == 5)
            .take(4096)
            .collect();
        assert_eq!(keys.len(), 4096);
        let hashes: Vec<u64> = keys.iter().map(hash_key).collect();
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        // 4096 random hashes fill about 63 % of 4096 buckets.
        assert!(buckets.len() > 2400, "{} of 4096 buckets used", buckets.len());
        assert_eq!(tags.len(), 128);
        let mut map = KeyMap::<String, usize>::default();
        for (i, k) in keys.iter().enumerate() {
            map.insert(k.clone(), i);
        }
        assert!(keys.iter().enumerate().all(|(i, k)| map.get(hash_key(k), k) == Some(&i)));
    }
}
