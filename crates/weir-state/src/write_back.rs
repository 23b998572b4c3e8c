//! A write-back cache in front of a [`KvStore`], for value and reducing state.
//!
//! Keyed state is mostly read-modify-write of the current key's value: with a store underneath,
//! every record pays a store read and a store write (for RocksDB, two memtable searches and a new
//! version of the row). The cache keeps recently used rows in memory, as bytes: a hit costs a
//! hash lookup, and a row written many times between two checkpoints reaches the store once.
//! Kafka Streams (record caches) and Samza (`CachedStore`) put the same kind of cache in front
//! of RocksDB.
//!
//! * Rows changed since they were last written to the store are dirty. They are written back when
//!   evicted (least recently used first, once the cache is over its byte budget) and all of them
//!   before a snapshot, so a snapshot of the store holds every change.
//! * Only value and reducing states go through it. List appends are already blind writes (a
//!   merge), and map state is read by prefix scans in key order, which the store does.
//! * A prefix scan or prefix delete of a cached state (rare: declaring a state reads its first
//!   row) first writes back that state's dirty rows, so the store sees what the cache holds.

use crate::error::StateError;
use crate::format::{StateKind, StateMeta};
use crate::serialized::KvStore;
use crate::snapshot::{SnapshotRequest, StoreSnapshot};
use lru::LruCache;
use rustc_hash::FxBuildHasher;
use weir_core::CheckpointId;

/// Bytes an entry costs beyond its key and value: the hash table slot, the LRU links and the two
/// allocations' headers. An estimate: the budget bounds memory, it does not measure it.
const ENTRY_OVERHEAD: usize = 96;

struct Row {
    /// `None`: the row is known not to exist (read as missing, or deleted).
    value: Option<Vec<u8>>,
    dirty: bool,
}

impl Row {
    fn cost(key: &[u8], value: &Option<Vec<u8>>) -> usize {
        key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
    }
}

/// A [`KvStore`] that caches value and reducing rows of `inner`, within `budget` bytes.
pub struct WriteBackCache {
    inner: Box<dyn KvStore>,
    /// Key: state index (u32, big-endian) ++ row key.
    rows: LruCache<Vec<u8>, Row, FxBuildHasher>,
    /// Whether each declared state goes through the cache.
    cached: Vec<bool>,
    bytes: usize,
    budget: usize,
    key_buf: Vec<u8>,
}

impl WriteBackCache {
    pub fn new(inner: Box<dyn KvStore>, budget: usize) -> Self {
        WriteBackCache {
            inner,
            rows: LruCache::unbounded_with_hasher(FxBuildHasher),
            cached: Vec::new(),
            bytes: 0,
            budget,
            key_buf: Vec::new(),
        }
    }

    fn is_cached(&self, state: usize) -> bool {
        self.cached.get(state).copied().unwrap_or(false)
    }

    /// `key_buf` = the cache key of (state, row key).
    fn compose(&mut self, state: usize, key: &[u8]) {
        self.key_buf.clear();
        self.key_buf.extend_from_slice(&(state as u32).to_be_bytes());
        self.key_buf.extend_from_slice(key);
    }

    /// Sets the row in `key_buf` to `value`, dirty.
    fn set(&mut self, value: Option<&[u8]>) -> Result<(), StateError> {
        if let Some(row) = self.rows.get_mut(self.key_buf.as_slice()) {
            let before = Row::cost(&self.key_buf, &row.value);
            match (&mut row.value, value) {
                (Some(old), Some(new)) => {
                    old.clear();
                    old.extend_from_slice(new);
                }
                (slot, new) => *slot = new.map(<[u8]>::to_vec),
            }
            row.dirty = true;
            let after = Row::cost(&self.key_buf, &row.value);
            self.bytes = self.bytes + after - before;
        } else {
            let value = value.map(<[u8]>::to_vec);
            self.bytes += Row::cost(&self.key_buf, &value);
            self.rows.push(self.key_buf.clone(), Row { value, dirty: true });
        }
        self.evict()
    }

    /// Evicts least recently used rows until the cache is within its budget, writing back dirty
    /// ones.
    fn evict(&mut self) -> Result<(), StateError> {
        while self.bytes > self.budget {
            let Some((key, row)) = self.rows.pop_lru() else {
                break;
            };
            self.bytes -= Row::cost(&key, &row.value);
            if row.dirty {
                if let Err(e) = write_row(self.inner.as_mut(), &key, &row.value) {
                    // Keep the change: the row stays, dirty, and the error reaches the caller.
                    self.bytes += Row::cost(&key, &row.value);
                    self.rows.push(key, row);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Writes back the dirty rows of `state` (every state when `None`); they stay cached, clean.
    fn write_back(&mut self, state: Option<usize>) -> Result<(), StateError> {
        let prefix = state.map(|s| (s as u32).to_be_bytes());
        for (key, row) in self.rows.iter_mut() {
            if row.dirty && prefix.is_none_or(|p| key.starts_with(&p)) {
                write_row(self.inner.as_mut(), key, &row.value)?;
                row.dirty = false;
            }
        }
        Ok(())
    }

    /// Drops the cached rows of `state` whose row key starts with `prefix`.
    fn forget(&mut self, state: usize, prefix: &[u8]) {
        self.compose(state, prefix);
        let doomed: Vec<Vec<u8>> =
            self.rows.iter().filter(|(k, _)| k.starts_with(&self.key_buf)).map(|(k, _)| k.clone()).collect();
        for key in doomed {
            if let Some(row) = self.rows.pop(key.as_slice()) {
                self.bytes -= Row::cost(&key, &row.value);
            }
        }
    }
}

/// Writes one cached row (cache key: state ++ row key) to the store.
fn write_row(store: &mut dyn KvStore, cache_key: &[u8], value: &Option<Vec<u8>>) -> Result<(), StateError> {
    let (state, key) = cache_key.split_at(4);
    let state = u32::from_be_bytes([state[0], state[1], state[2], state[3]]) as usize;
    match value {
        Some(v) => store.put(state, key, v),
        None => store.delete(state, key),
    }
}

impl KvStore for WriteBackCache {
    fn declare(&mut self, meta: &StateMeta) -> Result<usize, StateError> {
        let index = self.inner.declare(meta)?;
        if self.cached.len() <= index {
            self.cached.resize(index + 1, false);
        }
        // Namespaced map rows (window contents) are read and written one row at a time, like
        // values; user map state is read by prefix scans, which the store does.
        self.cached[index] = matches!(meta.kind, StateKind::Value | StateKind::Reducing)
            || (meta.kind == StateKind::Map && meta.namespace.is_some());
        Ok(index)
    }

    fn get(&mut self, state: usize, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        if !self.is_cached(state) {
            return self.inner.get(state, key, out);
        }
        self.compose(state, key);
        if let Some(row) = self.rows.get(self.key_buf.as_slice()) {
            return Ok(match &row.value {
                Some(v) => {
                    out.clear();
                    out.extend_from_slice(v);
                    true
                }
                None => false,
            });
        }
        let found = self.inner.get(state, key, out)?;
        let value = found.then(|| out.clone());
        self.bytes += Row::cost(&self.key_buf, &value);
        self.rows.push(self.key_buf.clone(), Row { value, dirty: false });
        self.evict()?;
        Ok(found)
    }

    fn put(&mut self, state: usize, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        if !self.is_cached(state) {
            return self.inner.put(state, key, value);
        }
        self.compose(state, key);
        self.set(Some(value))
    }

    fn append(&mut self, state: usize, key: &[u8], operand: &[u8]) -> Result<(), StateError> {
        // Lists are never cached (see the module docs).
        self.inner.append(state, key, operand)
    }

    fn delete(&mut self, state: usize, key: &[u8]) -> Result<(), StateError> {
        if !self.is_cached(state) {
            return self.inner.delete(state, key);
        }
        self.compose(state, key);
        self.set(None)
    }

    fn scan_prefix(
        &mut self,
        state: usize,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        if self.is_cached(state) {
            self.write_back(Some(state))?;
        }
        self.inner.scan_prefix(state, prefix, f)
    }

    fn delete_prefix(&mut self, state: usize, prefix: &[u8]) -> Result<(), StateError> {
        if self.is_cached(state) {
            self.forget(state, prefix);
        }
        self.inner.delete_prefix(state, prefix)
    }

    fn snapshot(&mut self, request: &SnapshotRequest) -> Result<Box<dyn StoreSnapshot>, StateError> {
        self.write_back(None)?;
        self.inner.snapshot(request)
    }

    fn checkpoint_complete(&mut self, id: CheckpointId) {
        self.inner.checkpoint_complete(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{SnapshotFiles, WrittenKeyedState};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use weir_core::metadata::SnapshotKind;

    type Rows = Arc<Mutex<BTreeMap<(usize, Vec<u8>), Vec<u8>>>>;

    /// An in-memory store: rows in a shared map the test inspects, and a count of writes.
    #[derive(Default, Clone)]
    struct MemStore {
        rows: Rows,
        writes: Arc<Mutex<usize>>,
        states: usize,
    }

    struct NoFiles;
    impl StoreSnapshot for NoFiles {
        fn write(&self, _: &dyn SnapshotFiles, _: &str) -> Result<WrittenKeyedState, StateError> {
            Ok(WrittenKeyedState::default())
        }
    }

    impl MemStore {
        fn wrote(&self) {
            *self.writes.lock().unwrap() += 1;
        }
        fn rows(&self) -> BTreeMap<(usize, Vec<u8>), Vec<u8>> {
            self.rows.lock().unwrap().clone()
        }
    }

    impl KvStore for MemStore {
        fn declare(&mut self, _: &StateMeta) -> Result<usize, StateError> {
            self.states += 1;
            Ok(self.states - 1)
        }
        fn get(&mut self, state: usize, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
            match self.rows.lock().unwrap().get(&(state, key.to_vec())) {
                Some(v) => {
                    out.clear();
                    out.extend_from_slice(v);
                    Ok(true)
                }
                None => Ok(false),
            }
        }
        fn put(&mut self, state: usize, key: &[u8], value: &[u8]) -> Result<(), StateError> {
            self.wrote();
            self.rows.lock().unwrap().insert((state, key.to_vec()), value.to_vec());
            Ok(())
        }
        fn append(&mut self, state: usize, key: &[u8], operand: &[u8]) -> Result<(), StateError> {
            self.wrote();
            self.rows.lock().unwrap().entry((state, key.to_vec())).or_default().extend_from_slice(operand);
            Ok(())
        }
        fn delete(&mut self, state: usize, key: &[u8]) -> Result<(), StateError> {
            self.wrote();
            self.rows.lock().unwrap().remove(&(state, key.to_vec()));
            Ok(())
        }
        fn scan_prefix(
            &mut self,
            state: usize,
            prefix: &[u8],
            f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StateError> {
            for ((s, k), v) in self.rows.lock().unwrap().iter() {
                if *s == state && k.starts_with(prefix) && !f(k, v) {
                    break;
                }
            }
            Ok(())
        }
        fn delete_prefix(&mut self, state: usize, prefix: &[u8]) -> Result<(), StateError> {
            self.wrote();
            self.rows.lock().unwrap().retain(|(s, k), _| !(*s == state && k.starts_with(prefix)));
            Ok(())
        }
        fn snapshot(&mut self, _: &SnapshotRequest) -> Result<Box<dyn StoreSnapshot>, StateError> {
            Ok(Box::new(NoFiles))
        }
        fn checkpoint_complete(&mut self, _: CheckpointId) {}
    }

    fn meta(name: &str, kind: StateKind) -> StateMeta {
        StateMeta::new(name, kind)
    }

    const REQUEST: SnapshotRequest = SnapshotRequest { id: 1, kind: SnapshotKind::Checkpoint, full: false };

    fn get(store: &mut dyn KvStore, state: usize, key: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        store.get(state, key, &mut out).unwrap().then_some(out)
    }

    #[test]
    fn repeated_updates_reach_the_store_once_per_snapshot() {
        let mem = MemStore::default();
        let mut cache = WriteBackCache::new(Box::new(mem.clone()), 1 << 20);
        let s = cache.declare(&meta("count", StateKind::Value)).unwrap();
        for n in 0..1000u32 {
            cache.put(s, b"k", &n.to_be_bytes()).unwrap();
        }
        assert_eq!(get(&mut cache, s, b"k"), Some(999u32.to_be_bytes().to_vec()));
        assert_eq!(*mem.writes.lock().unwrap(), 0, "nothing written before the snapshot");
        cache.snapshot(&REQUEST).unwrap();
        assert_eq!(*mem.writes.lock().unwrap(), 1);
        assert_eq!(mem.rows().get(&(s, b"k".to_vec())), Some(&999u32.to_be_bytes().to_vec()));
        cache.snapshot(&REQUEST).unwrap();
        assert_eq!(*mem.writes.lock().unwrap(), 1, "a clean row is not written again");
    }

    #[test]
    fn a_full_cache_writes_back_the_least_recently_used_rows() {
        // Room for ten rows: a 4-byte state prefix, a 4-byte key and a 4-byte value each.
        let mem = MemStore::default();
        let mut cache = WriteBackCache::new(Box::new(mem.clone()), 10 * (ENTRY_OVERHEAD + 4 + 4 + 4));
        let s = cache.declare(&meta("v", StateKind::Value)).unwrap();
        for k in 0..20u32 {
            cache.put(s, &k.to_be_bytes(), b"1234").unwrap();
        }
        let stored = mem.rows();
        assert_eq!(stored.len(), 10, "the ten oldest rows were evicted into the store");
        assert!((0..10u32).all(|k| stored.contains_key(&(s, k.to_be_bytes().to_vec()))));
        assert!((0..20u32).all(|k| get(&mut cache, s, &k.to_be_bytes()) == Some(b"1234".to_vec())));
        // Reading a row makes it recent: the next eviction takes another one.
        cache.snapshot(&REQUEST).unwrap();
        get(&mut cache, s, &10u32.to_be_bytes());
        cache.put(s, &99u32.to_be_bytes(), b"1234").unwrap();
        assert!(cache.rows.contains(&[&0u32.to_be_bytes()[..], &10u32.to_be_bytes()].concat()));
        assert!(!cache.rows.contains(&[&0u32.to_be_bytes()[..], &11u32.to_be_bytes()].concat()));
    }

    #[test]
    fn deletes_are_written_back_and_reads_see_them() {
        let mem = MemStore::default();
        mem.rows.lock().unwrap().insert((0, b"k".to_vec()), b"old".to_vec());
        let mut cache = WriteBackCache::new(Box::new(mem.clone()), 1 << 20);
        let s = cache.declare(&meta("v", StateKind::Value)).unwrap();
        assert_eq!(get(&mut cache, s, b"k"), Some(b"old".to_vec()));
        cache.delete(s, b"k").unwrap();
        assert_eq!(get(&mut cache, s, b"k"), None);
        assert!(mem.rows().contains_key(&(s, b"k".to_vec())), "not yet written back");
        cache.snapshot(&REQUEST).unwrap();
        assert!(mem.rows().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(usize, u8),
        Put(usize, u8, u8),
        Append(u8, u8),
        Delete(usize, u8),
        Scan(usize),
        DeletePrefix(usize, u8),
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        let state = 0..3usize;
        prop_oneof![
            (state.clone(), 0..8u8).prop_map(|(s, k)| Op::Get(s, k)),
            (state.clone(), 0..8u8, any::<u8>()).prop_map(|(s, k, v)| Op::Put(s, k, v)),
            (0..8u8, any::<u8>()).prop_map(|(k, v)| Op::Append(k, v)),
            (state.clone(), 0..8u8).prop_map(|(s, k)| Op::Delete(s, k)),
            state.clone().prop_map(Op::Scan),
            (state, 0..8u8).prop_map(|(s, k)| Op::DeletePrefix(s, k)),
            Just(Op::Snapshot),
        ]
    }

    /// Row key of key `k`: two bytes, so prefixes of one byte select several keys.
    fn row(k: u8) -> [u8; 2] {
        [k / 4, k]
    }

    proptest! {
        /// The cache is invisible: every read and scan returns what the store alone returns, and
        /// after a snapshot the store holds the same rows, whatever the budget.
        #[test]
        fn behaves_like_the_store_alone(ops in prop::collection::vec(op(), 1..200), budget in 0usize..2000) {
            let plain = MemStore::default();
            let mut reference: Box<dyn KvStore> = Box::new(plain.clone());
            let behind = MemStore::default();
            let mut cache: Box<dyn KvStore> = Box::new(WriteBackCache::new(Box::new(behind.clone()), budget));
            for (i, kind) in [StateKind::Value, StateKind::Reducing, StateKind::List].into_iter().enumerate() {
                let m = meta(&format!("s{i}"), kind);
                prop_assert_eq!(reference.declare(&m).unwrap(), cache.declare(&m).unwrap());
            }
            for op in ops {
                match op {
                    Op::Get(s, k) => prop_assert_eq!(get(reference.as_mut(), s, &row(k)), get(cache.as_mut(), s, &row(k))),
                    Op::Put(s, k, v) => {
                        reference.put(s, &row(k), &[v]).unwrap();
                        cache.put(s, &row(k), &[v]).unwrap();
                    }
                    // Appends only to the list state, as the typed layer does.
                    Op::Append(k, v) => {
                        reference.append(2, &row(k), &[v]).unwrap();
                        cache.append(2, &row(k), &[v]).unwrap();
                    }
                    Op::Delete(s, k) => {
                        reference.delete(s, &row(k)).unwrap();
                        cache.delete(s, &row(k)).unwrap();
                    }
                    Op::Scan(s) => {
                        let scan = |store: &mut dyn KvStore| {
                            let mut out = Vec::new();
                            store.scan_prefix(s, &[], &mut |k, v| { out.push((k.to_vec(), v.to_vec())); true }).unwrap();
                            out
                        };
                        prop_assert_eq!(scan(reference.as_mut()), scan(cache.as_mut()));
                    }
                    Op::DeletePrefix(s, k) => {
                        reference.delete_prefix(s, &[k / 4]).unwrap();
                        cache.delete_prefix(s, &[k / 4]).unwrap();
                    }
                    Op::Snapshot => {
                        cache.snapshot(&REQUEST).unwrap();
                        prop_assert_eq!(plain.rows(), behind.rows());
                    }
                }
            }
            cache.snapshot(&REQUEST).unwrap();
            prop_assert_eq!(plain.rows(), behind.rows());
        }
    }
}
