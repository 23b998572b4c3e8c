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

mod rows;

use crate::error::StateError;
use crate::format::{StateKind, StateMeta};
use crate::serialized::{KvStore, RowWrite};
use crate::snapshot::{SnapshotRequest, StoreSnapshot};
use rows::{Row, RowTable};
use weir_core::CheckpointId;

/// Eviction frees a sixty-fourth of the budget at once, so rows reach the store in sorted batches
/// of thousands (a 64 MB cache of small rows: about 20000) instead of one call per row.
const EVICTION_SLICE: usize = 64;

/// Rows per batch when a snapshot writes back the dirty rows.
const WRITE_BACK_BATCH: usize = 4096;

/// Reads over which the miss rate is measured to decide whether prefetching pays.
const PREFETCH_WINDOW: u32 = 4096;

/// Prefetching pays once more than one read in this many misses: a batched lookup saves store
/// work per miss, while holding records back costs every record a little.
const PREFETCH_MISS_RATIO: u32 = 8;

/// What the cache did since it was created: the numbers a profile of a state-heavy job needs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounts {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to the store.
    pub misses: u64,
    /// Rows evicted to stay within the budget.
    pub evictions: u64,
    /// Evicted rows that were dirty, so written to the store.
    pub evicted_dirty: u64,
    /// Dirty rows written to the store by snapshots and scans.
    pub written_back: u64,
    /// Rows loaded by prefetches (reads of them then count as hits).
    pub prefetched: u64,
}

/// The miss rate of the latest reads, which decides whether prefetching pays.
#[derive(Debug, Default)]
struct MissWindow {
    reads: u32,
    misses: u32,
    prefetch: bool,
}

impl MissWindow {
    fn record(&mut self, reads: u32, misses: u32) {
        self.reads += reads;
        self.misses += misses;
        if self.reads >= PREFETCH_WINDOW {
            self.prefetch = self.misses * PREFETCH_MISS_RATIO > self.reads;
            (self.reads, self.misses) = (0, 0);
        }
    }
}

/// A [`KvStore`] that caches value and reducing rows of `inner`, within `budget` bytes.
pub struct WriteBackCache {
    inner: Box<dyn KvStore>,
    /// Key: state index (u32, big-endian) ++ row key.
    rows: RowTable,
    /// Whether each declared state goes through the cache.
    cached: Vec<bool>,
    budget: usize,
    key_buf: Vec<u8>,
    /// The batch being evicted; kept to reuse its allocation.
    evicted: Vec<Row>,
    counts: CacheCounts,
    misses: MissWindow,
    /// Log `counts` when dropped.
    report: bool,
}

impl WriteBackCache {
    pub fn new(inner: Box<dyn KvStore>, budget: usize) -> Self {
        WriteBackCache {
            inner,
            rows: RowTable::new(budget),
            cached: Vec::new(),
            budget,
            key_buf: Vec::new(),
            evicted: Vec::new(),
            counts: CacheCounts::default(),
            misses: MissWindow::default(),
            report: false,
        }
    }

    /// Logs the cache's counts when it is dropped (at the end of the subtask).
    pub fn report_on_drop(mut self) -> Self {
        self.report = true;
        self
    }

    pub fn counts(&self) -> CacheCounts {
        self.counts
    }

    /// Bytes the cached rows take in memory, as the budget counts them.
    pub fn bytes(&self) -> usize {
        self.rows.bytes()
    }

    fn is_cached(&self, state: usize) -> bool {
        self.cached.get(state).copied().unwrap_or(false)
    }

    /// `key_buf` = the cache key of (state, row key).
    fn compose(&mut self, state: usize, key: &[u8]) {
        compose_into(&mut self.key_buf, state, key)
    }

    /// Sets the row in `key_buf` to `value`, dirty.
    fn set(&mut self, value: Option<&[u8]>) -> Result<(), StateError> {
        match self.rows.find(&self.key_buf) {
            Some(at) => self.rows.set(at, value),
            None => self.rows.insert(&self.key_buf, value, true),
        }
        self.evict()
    }

    /// Once the cache is over its budget, evicts least recently used rows until it is a slice
    /// ([`EVICTION_SLICE`]) under it, and writes the dirty ones back in one sorted batch.
    fn evict(&mut self) -> Result<(), StateError> {
        if self.rows.bytes() <= self.budget {
            return Ok(());
        }
        let target = self.budget - self.budget / EVICTION_SLICE;
        let mut evicted = std::mem::take(&mut self.evicted);
        while self.rows.bytes() > target {
            let Some(row) = self.rows.pop_oldest() else {
                break;
            };
            self.counts.evictions += 1;
            if row.dirty {
                evicted.push(row);
            }
        }
        self.counts.evicted_dirty += evicted.len() as u64;
        evicted.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        let written = write_rows(self.inner.as_mut(), evicted.iter().map(|r| (r.key(), r.value())));
        if written.is_err() {
            // Keep the changes: the rows stay, dirty, and the error reaches the caller.
            for row in evicted.drain(..) {
                self.rows.restore(row);
            }
        }
        evicted.clear();
        self.evicted = evicted;
        written
    }

    /// Writes back the dirty rows of `state` (every state when `None`) in batches, each sorted;
    /// they stay cached, clean.
    fn write_back(&mut self, state: Option<usize>) -> Result<(), StateError> {
        let prefix = state.map(|s| (s as u32).to_be_bytes());
        let prefix = prefix.as_ref().map_or(&[][..], |p| &p[..]);
        let mut batch = Vec::with_capacity(WRITE_BACK_BATCH);
        let mut from = 0;
        loop {
            from = self.rows.dirty_batch(prefix, from, WRITE_BACK_BATCH, &mut batch);
            if batch.is_empty() {
                return Ok(());
            }
            write_rows(self.inner.as_mut(), batch.iter().map(|&at| self.rows.row(at)))?;
            for &at in &batch {
                self.rows.mark_clean(at);
            }
            self.counts.written_back += batch.len() as u64;
        }
    }

    /// Drops the cached rows of `state` whose row key starts with `prefix`.
    fn forget(&mut self, state: usize, prefix: &[u8]) {
        self.compose(state, prefix);
        self.rows.remove_prefix(&self.key_buf);
    }
}

/// `buf` = the cache key of (state, row key).
fn compose_into(buf: &mut Vec<u8>, state: usize, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&(state as u32).to_be_bytes());
    buf.extend_from_slice(key);
}

/// Writes cached rows (cache key: state ++ row key) to the store in one batch.
fn write_rows<'a>(
    store: &mut dyn KvStore,
    rows: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<(), StateError> {
    let batch: Vec<RowWrite<'a>> = rows
        .map(|(cache_key, value)| {
            let (state, key) = cache_key.split_at(4);
            let state = u32::from_be_bytes([state[0], state[1], state[2], state[3]]) as usize;
            RowWrite { state, key, value }
        })
        .collect();
    if batch.is_empty() {
        return Ok(());
    }
    store.write_rows(&batch)
}

impl Drop for WriteBackCache {
    fn drop(&mut self) {
        if self.report {
            let c = self.counts;
            tracing::info!(
                hits = c.hits,
                misses = c.misses,
                evictions = c.evictions,
                evicted_dirty = c.evicted_dirty,
                written_back = c.written_back,
                prefetched = c.prefetched,
                rows = self.rows.len(),
                bytes = self.rows.bytes(),
                "write-back cache counts"
            );
        }
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
        if let Some(at) = self.rows.find(&self.key_buf) {
            self.counts.hits += 1;
            self.misses.record(1, 0);
            return Ok(match self.rows.value(at) {
                Some(v) => {
                    out.clear();
                    out.extend_from_slice(v);
                    true
                }
                None => false,
            });
        }
        self.counts.misses += 1;
        self.misses.record(1, 1);
        let found = self.inner.get(state, key, out)?;
        self.rows.insert(&self.key_buf, found.then_some(out.as_slice()), false);
        self.evict()?;
        Ok(found)
    }

    /// Loads the rows of `keys` the cache does not hold with one [`KvStore::get_many`] of the
    /// store, as clean rows (absent ones too, so their reads skip the store as well). Rows are
    /// added in the records' order, as reads would add them: a cache slot's place in memory
    /// follows first use (sorting them cost a cyclic key pattern a fifth of its throughput once
    /// every row was cached, its slots no longer in the order it reads them).
    fn prefetch(&mut self, state: usize, keys: &[&[u8]]) -> Result<(), StateError> {
        if !self.is_cached(state) {
            return Ok(());
        }
        let mut missing: Vec<&[u8]> = Vec::with_capacity(keys.len());
        for &key in keys {
            self.compose(state, key);
            if !self.rows.contains(&self.key_buf) {
                missing.push(key);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let (rows, key_buf, mut loaded) = (&mut self.rows, &mut self.key_buf, 0u32);
        self.inner.get_many(state, &missing, &mut |i, value| {
            compose_into(key_buf, state, missing[i]);
            // A key twice in the batch is loaded once.
            if !rows.contains(key_buf) {
                rows.insert(key_buf, value, false);
                loaded += 1;
            }
        })?;
        self.counts.prefetched += u64::from(loaded);
        self.misses.record(0, loaded);
        // Over the budget by at most the batch's rows until now.
        self.evict()
    }

    fn prefetch_worthwhile(&self) -> bool {
        self.misses.prefetch
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
        /// Rows of each batch `write_rows` got.
        batches: Arc<Mutex<Vec<usize>>>,
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
        fn write_rows(&mut self, rows: &[RowWrite<'_>]) -> Result<(), StateError> {
            assert!(rows.windows(2).all(|w| (w[0].state, w[0].key) < (w[1].state, w[1].key)), "sorted");
            self.batches.lock().unwrap().push(rows.len());
            crate::serialized::write_each_row(self, rows)
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

    /// Cache key of row `k` of state 0.
    fn cached(k: u32) -> Vec<u8> {
        [&0u32.to_be_bytes()[..], &k.to_be_bytes()].concat()
    }

    #[test]
    fn a_full_cache_writes_back_the_least_recently_used_rows_in_sorted_batches() {
        const BUDGET: usize = 64 << 10;
        const ROWS: u32 = 5000;
        let mem = MemStore::default();
        let mut cache = WriteBackCache::new(Box::new(mem.clone()), BUDGET);
        let s = cache.declare(&meta("v", StateKind::Value)).unwrap();
        // Keys put in descending order, so a batch sorted by key is not the eviction order.
        for k in (0..ROWS).rev() {
            cache.put(s, &k.to_be_bytes(), b"1234").unwrap();
            assert!(cache.bytes() <= BUDGET, "{} bytes after row {k}", cache.bytes());
        }
        let counts = cache.counts();
        let evicted = counts.evictions as u32;
        assert!(evicted > ROWS / 2, "{evicted} rows evicted");
        assert_eq!(counts.evicted_dirty, counts.evictions);
        let stored = mem.rows();
        assert_eq!(stored.len(), evicted as usize);
        assert!((ROWS - evicted..ROWS).all(|k| stored.contains_key(&(s, k.to_be_bytes().to_vec()))), "the oldest");
        let batches = mem.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), evicted as usize, "every eviction went through a batch");
        assert!(batches.iter().all(|&n| n > 10), "rows are evicted a slice at a time: {batches:?}");

        // A cycle through more rows than fit evicts each row before it is read again.
        assert!((0..ROWS).rev().all(|k| get(&mut cache, s, &k.to_be_bytes()) == Some(b"1234".to_vec())));
        let counts = cache.counts();
        assert_eq!((counts.hits, counts.misses), (0, ROWS as u64));

        // Reading a row makes it recent: the next eviction takes others.
        cache.snapshot(&REQUEST).unwrap();
        let mut by_age = (0..ROWS).rev().filter(|&k| cache.rows.contains(&cached(k)));
        let (oldest, second) = (by_age.next().unwrap(), by_age.next().unwrap());
        assert_eq!(get(&mut cache, s, &oldest.to_be_bytes()), Some(b"1234".to_vec()));
        let before = cache.counts().evictions;
        let mut k = 10_000u32;
        while cache.counts().evictions == before {
            cache.put(s, &k.to_be_bytes(), b"1234").unwrap();
            k += 1;
        }
        assert!(cache.rows.contains(&cached(oldest)));
        assert!(!cache.rows.contains(&cached(second)));
    }

    #[test]
    fn a_snapshot_writes_back_each_dirty_row_once_in_bounded_sorted_batches() {
        let mem = MemStore::default();
        let mut cache = WriteBackCache::new(Box::new(mem.clone()), 4 << 20);
        let s = cache.declare(&meta("count", StateKind::Value)).unwrap();
        const ROWS: u32 = 2 * WRITE_BACK_BATCH as u32 + 100;
        // Descending, so slot order is not key order.
        for k in (0..ROWS).rev() {
            cache.put(s, &k.to_be_bytes(), b"v").unwrap();
        }
        assert_eq!(cache.counts().evictions, 0, "all rows fit");
        cache.snapshot(&REQUEST).unwrap();
        let batches = mem.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![WRITE_BACK_BATCH, WRITE_BACK_BATCH, 100]);
        assert_eq!(mem.rows().len(), ROWS as usize);
        assert_eq!(*mem.writes.lock().unwrap(), ROWS as usize, "each row written once");
        for k in [7u32, ROWS - 1] {
            cache.put(s, &k.to_be_bytes(), b"w").unwrap();
        }
        cache.snapshot(&REQUEST).unwrap();
        assert_eq!(mem.batches.lock().unwrap()[3..], [2], "only the rows changed since");
        assert_eq!(mem.rows().get(&(s, (ROWS - 1).to_be_bytes().to_vec())), Some(&b"w".to_vec()));
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

    #[test]
    fn a_prefetch_loads_missing_rows_in_one_batch_so_the_reads_that_follow_hit() {
        let mem = MemStore::default();
        for k in 0..100u32 {
            mem.rows.lock().unwrap().insert((0, k.to_be_bytes().to_vec()), vec![k as u8]);
        }
        let mut cache = WriteBackCache::new(Box::new(mem.clone()), 1 << 20);
        let s = cache.declare(&meta("v", StateKind::Value)).unwrap();
        assert_eq!(get(&mut cache, s, &7u32.to_be_bytes()), Some(vec![7]));
        assert!(!cache.prefetch_worthwhile(), "one miss is no pattern yet");
        // Rows 0..200 twice over, row 7 already cached, 100..200 not in the store.
        let rows: Vec<[u8; 4]> = (0..200u32).chain(0..200).map(u32::to_be_bytes).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
        cache.prefetch(s, &keys).unwrap();
        assert_eq!(cache.counts().prefetched, 199, "each missing row once");
        for k in 0..200u32 {
            assert_eq!(get(&mut cache, s, &k.to_be_bytes()), (k < 100).then(|| vec![k as u8]));
        }
        assert_eq!((cache.counts().hits, cache.counts().misses), (200, 1));
        assert!(cache.prefetch(s, &keys).is_ok());
        assert_eq!(cache.counts().prefetched, 199, "cached rows are not loaded again");
    }

    #[test]
    fn prefetching_pays_while_reads_miss_often() {
        let mut window = MissWindow::default();
        window.record(PREFETCH_WINDOW - 1, PREFETCH_WINDOW - 1);
        assert!(!window.prefetch, "decided once per window");
        window.record(1, 0);
        assert!(window.prefetch);
        // Reads that hit because a prefetch loaded them count as the misses they replaced.
        window.record(PREFETCH_WINDOW, PREFETCH_WINDOW / PREFETCH_MISS_RATIO + 1);
        assert!(window.prefetch);
        window.record(PREFETCH_WINDOW, PREFETCH_WINDOW / PREFETCH_MISS_RATIO);
        assert!(!window.prefetch, "one miss in {PREFETCH_MISS_RATIO} reads or fewer");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(usize, u8),
        Put(usize, u8, u8),
        Append(u8, u8),
        Delete(usize, u8),
        Scan(usize),
        DeletePrefix(usize, u8),
        Prefetch(usize, Vec<u8>),
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
            (state.clone(), 0..8u8).prop_map(|(s, k)| Op::DeletePrefix(s, k)),
            (state, prop::collection::vec(0..8u8, 0..6)).prop_map(|(s, ks)| Op::Prefetch(s, ks)),
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
                    // A hint only: nothing to compare until the next read.
                    Op::Prefetch(s, ks) => {
                        let rows: Vec<[u8; 2]> = ks.iter().map(|&k| row(k)).collect();
                        let keys: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
                        cache.prefetch(s, &keys).unwrap();
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
