//! Records a keyed operator holds back to find their state together.
//!
//! While batching pays ([`KeyedStateBackend::batching_pays`]), a keyed process operator holds its
//! records back, up to a batch, then processes them in two passes:
//! the first finds every held record's state at once (a store reads their rows with one batched
//! lookup; the heap locates their keys, key group and hash, so that the records' hash chains
//! overlap instead of each waiting on its own), the second processes the records one by one, in
//! order, as they would have been. Every event (barrier, watermark, timer, flush on idle input,
//! end) processes the held records first, so nothing held crosses a snapshot, a watermark or a
//! quiet input. Where batching does not pay, records pass straight through.
//!
//! The window operator does not hold records: on the heap its per-record work (the window, the
//! trigger, the key's windows) is long enough that consecutive records overlap without it, and
//! holding them cost the windows benchmark 7 % (9.3 -> 8.6 M records/s); a store prefetches rows
//! by key only, not a window's rows.

use crate::operators::KeySelector;
use weir_runtime::{TaskResult, Timestamp};
use weir_state::{Key, KeyLocation, KeyedStateBackend, StateError};

/// Records held back in a store, whose rows they then prefetch with one batched lookup.
const PREFETCH_BATCH: usize = 256;

/// Records held back on the heap, whose keys are then located together: measured on the
/// reference shape, 256 gained 15 %, 1024 and 4096 about 20 %.
const LOCATE_BATCH: usize = 1024;

pub(crate) struct HeldRecords<K, I> {
    records: Vec<(I, Option<Timestamp>)>,
    /// The held records' keys, in order: computed, or copies of borrowed keys made into the
    /// memory of an earlier batch's keys. Those past the batch's records are left from earlier
    /// batches (at most one batch of keys).
    keys: Vec<K>,
    /// Where each held record's state is.
    at: Vec<KeyLocation>,
    /// The backend is a store, which prefetches rows (else the heap, which locates keys).
    prefetching: bool,
    batch: usize,
    /// What the backend said when last asked whether batching pays, and the records left until
    /// it is asked again: once per `batch` records, however often events cut batches short (the
    /// heap's answer sums its states' key groups).
    batching: bool,
    until_asked: usize,
}

impl<K, I> Default for HeldRecords<K, I> {
    fn default() -> Self {
        HeldRecords {
            records: Vec::new(),
            keys: Vec::new(),
            at: Vec::new(),
            prefetching: false,
            batch: LOCATE_BATCH,
            batching: false,
            until_asked: 0,
        }
    }
}

impl<K: Key, I> HeldRecords<K, I> {
    pub fn new(backend: &KeyedStateBackend<K>) -> Self {
        let prefetching = backend.can_prefetch();
        HeldRecords {
            prefetching,
            batch: if prefetching { PREFETCH_BATCH } else { LOCATE_BATCH },
            ..HeldRecords::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the next record is held back: while a batch is open, and otherwise when the
    /// backend last said batching pays.
    #[inline]
    pub fn holds(&mut self, backend: &KeyedStateBackend<K>) -> bool {
        if !self.records.is_empty() {
            return true;
        }
        if self.until_asked == 0 {
            self.batching = backend.batching_pays();
            self.until_asked = self.batch;
        }
        if !self.batching {
            self.until_asked -= 1;
        }
        self.batching
    }

    /// Holds `record` back; true when the batch is full and should be processed.
    #[inline]
    pub fn push(&mut self, record: I, timestamp: Option<Timestamp>) -> bool {
        self.records.push((record, timestamp));
        self.records.len() >= self.batch
    }

    /// The first pass: copies every held record's key and locates it, then prefetches their rows
    /// (a store). The copies serve the second pass, which moves the records into the function.
    pub fn find_state(
        &mut self,
        selector: &KeySelector<K, I>,
        backend: &mut KeyedStateBackend<K>,
    ) -> Result<(), StateError> {
        self.until_asked = self.until_asked.saturating_sub(self.records.len());
        self.at.clear();
        for (i, (record, _)) in self.records.iter().enumerate() {
            let at = match selector {
                KeySelector::Computed(f) => {
                    let key = f(record);
                    let at = backend.locate(&key);
                    keep_key(&mut self.keys, i, key);
                    at
                }
                KeySelector::Borrowed(f) => {
                    let key = f(record);
                    let at = backend.locate(key);
                    copy_key(&mut self.keys, i, key);
                    at
                }
            };
            self.at.push(at);
        }
        if self.prefetching {
            return backend.prefetch(&self.keys[..self.records.len()]);
        }
        Ok(())
    }

    /// The second pass: hands every held record, in order, with its key and its state's
    /// location, to `process`, and empties the batch (also when `process` fails).
    pub fn process(
        &mut self,
        mut process: impl FnMut(&K, KeyLocation, I, Option<Timestamp>) -> TaskResult,
    ) -> TaskResult {
        let mut result = Ok(());
        for (((record, timestamp), &at), key) in self.records.drain(..).zip(&self.at).zip(&self.keys) {
            result = process(key, at, record, timestamp);
            if result.is_err() {
                break;
            }
        }
        result
    }
}

/// Puts the `i`-th held record's computed key in place.
#[inline]
fn keep_key<K>(keys: &mut Vec<K>, i: usize, key: K) {
    match keys.get_mut(i) {
        Some(kept) => *kept = key,
        None => keys.push(key),
    }
}

/// Copies the `i`-th held record's borrowed key into the key kept in its place, reusing that
/// key's memory: a `String` key costs a copy, not an allocation and a free.
#[inline]
fn copy_key<K: Clone>(keys: &mut Vec<K>, i: usize, key: &K) {
    match keys.get_mut(i) {
        Some(kept) => kept.clone_from(key),
        None => keys.push(key.clone()),
    }
}
