//! The heap keyed state backend (`state.backend.type: hashmap`).
//!
//! State lives as typed values in one hash map per key group, so a record costs one map lookup and
//! no serialization. A snapshot puts each key group's map behind an `Arc` and clones it (the
//! synchronous part of a checkpoint); the first write to a key group after that takes its map back,
//! copying it only while the snapshot still holds it (`Group`). The asynchronous part then encodes
//! the frozen maps off the task thread.

use crate::codec;
use crate::error::StateError;
use crate::format::{
    push_entries, push_sorted_entries, push_state_head, read_key_groups, verify_files, FileHeader, StateEntries,
    StateFileWriter, StateKind, StateMeta,
};
use crate::parallel;
use crate::snapshot::RestoredKeyedState;
use crate::sorted_entries::{
    entry_starts, framed, framed_entries, keys_ascend, merge_framed, Merged, SortedEntries, TooLarge,
};
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use weir_core::key_group::{assign_to_key_group, key_group_for_hash};
use weir_core::KeyGroupRange;

use crate::descriptors::{Key, ReduceFn, StateData};
use crate::timers::TimerQueues;
use crate::vec_map::VecMap;
use key_map::{hash_key, hash_key_with, KeyMap, KeyOrder, KeysSince};

mod key_map;

/// One key group of one state. Owned while no snapshot holds it, so a write is a plain `&mut`;
/// a snapshot turns it into a shared `Arc`, and the first write after that takes it back (copying
/// it only if the snapshot still holds it). `Arc::make_mut` on every write would pay an atomic
/// compare-and-swap per record.
enum Group<K, V> {
    Owned(KeyMap<K, V>),
    Shared(Arc<KeyMap<K, V>>),
}

impl<K: Key, V: StateData> Group<K, V> {
    #[inline]
    fn map(&self) -> &KeyMap<K, V> {
        match self {
            Group::Owned(m) => m,
            Group::Shared(m) => m,
        }
    }

    #[inline]
    fn map_mut(&mut self) -> &mut KeyMap<K, V> {
        if let Group::Shared(_) = self {
            self.take_back();
        }
        match self {
            Group::Owned(m) => m,
            Group::Shared(_) => unreachable!("taken back above"),
        }
    }

    #[cold]
    fn take_back(&mut self) {
        if let Group::Shared(shared) = std::mem::replace(self, Group::Owned(KeyMap::default())) {
            *self = Group::Owned(Arc::try_unwrap(shared).unwrap_or_else(|still_held| (*still_held).clone()));
        }
    }

    /// The group for a snapshot; from now on it is shared until the next write.
    fn freeze(&mut self) -> Arc<KeyMap<K, V>> {
        match self {
            Group::Owned(m) => {
                m.freezing();
                *self = Group::Shared(Arc::new(std::mem::take(m)));
            }
            Group::Shared(m) => m.freezing_again(),
        }
        match self {
            Group::Shared(m) => m.clone(),
            Group::Owned(_) => unreachable!("shared above"),
        }
    }
}

/// Encoded `(key, value)` entries of one key group, framed back to back in one buffer (as a block
/// payload frames them): a restore of 10^7 entries kept as two vectors each spent a third of its
/// time allocating and freeing them.
#[derive(Default, Clone)]
struct Entries {
    framed: Vec<u8>,
    len: usize,
}

impl Entries {
    /// Appends a state's entries as a block frames them: one copy, not one per entry.
    fn extend(&mut self, state: &StateEntries<'_>) {
        self.framed.extend_from_slice(state.framed);
        self.len += state.len;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        framed_entries(&self.framed)
    }
}

struct Table<K, V> {
    meta: StateMeta,
    groups: Vec<Group<K, V>>,
    reduce: Option<ReduceFn<V>>,
    /// Entries over all key groups, counted as they come and go: the keyed operator asks for the
    /// footprint once per batch of records, and summing the key groups' lengths instead took half
    /// of a job's time at max parallelism 32768 (5.5 M records/s on the reference shape instead
    /// of 15).
    entries: usize,
}

impl<K: Key, V: StateData> Table<K, V> {
    /// Key group `group`'s value of `key`, inserted with `init` when it has none.
    #[inline]
    fn get_or_insert_with(&mut self, group: usize, hash: u64, key: &K, init: impl FnOnce() -> V) -> &mut V {
        let (value, inserted) = self.groups[group].map_mut().get_or_insert_with(hash, key, init);
        self.entries += usize::from(inserted);
        value
    }

    /// Inserts `key`, which key group `group` does not hold yet.
    #[inline]
    fn insert_new(&mut self, group: usize, hash: u64, key: K, value: V) {
        self.groups[group].map_mut().insert_new(hash, key, value);
        self.entries += 1;
    }

    /// Removes `key` from key group `group`; a key group that does not hold it is not taken back
    /// from a snapshot that shares it.
    fn remove(&mut self, group: usize, hash: u64, key: &K) -> Option<V> {
        self.groups[group].map().get(hash, key)?;
        let removed = self.groups[group].map_mut().remove(hash, key);
        self.entries -= usize::from(removed.is_some());
        removed
    }
}

/// A table of any value type, as the backend stores it. A state handle's lookup turns it back
/// into its typed table after comparing the `TypeId` recorded when it was declared.
trait AnyTable<K>: Any + Send {
    fn meta(&self) -> &StateMeta;
    fn snapshot(&mut self) -> Box<dyn TableSnapshot>;
    /// About how many bytes its entries take (not counting what they point to).
    fn footprint(&self) -> usize;
    /// The entries counted, and those the key groups hold.
    #[cfg(test)]
    fn entries_counted_and_held(&self) -> (usize, usize);
}

/// A frozen view of one state's key groups, encoded off the task thread.
trait TableSnapshot: Send + Sync {
    fn meta(&self) -> &StateMeta;
    fn group_len(&self, index: usize) -> usize;
    /// Appends the entries of one key group (index within the range) to a block payload as state
    /// `state_index`, sorted by key bytes. `buf` is reused across calls, so encoding allocates
    /// nothing per entry.
    fn write_group(
        &self,
        index: usize,
        state_index: u16,
        payload: &mut Vec<u8>,
        buf: &mut SortedEntries,
    ) -> Result<(), StateError>;
}

impl<K: Key, V: StateData> AnyTable<K> for Table<K, V> {
    fn meta(&self) -> &StateMeta {
        &self.meta
    }
    fn snapshot(&mut self) -> Box<dyn TableSnapshot> {
        Box::new(FrozenTable { meta: self.meta.clone(), groups: self.groups.iter_mut().map(Group::freeze).collect() })
    }
    fn footprint(&self) -> usize {
        self.entries * (std::mem::size_of::<(K, V)>() + 1)
    }
    #[cfg(test)]
    fn entries_counted_and_held(&self) -> (usize, usize) {
        (self.entries, self.groups.iter().map(|g| g.map().len()).sum())
    }
}

struct FrozenTable<K, V> {
    meta: StateMeta,
    groups: Vec<Arc<KeyMap<K, V>>>,
}

impl<K: Key, V: StateData> TableSnapshot for FrozenTable<K, V> {
    fn meta(&self) -> &StateMeta {
        &self.meta
    }
    fn group_len(&self, index: usize) -> usize {
        self.groups[index].len()
    }
    fn write_group(
        &self,
        index: usize,
        state_index: u16,
        payload: &mut Vec<u8>,
        buf: &mut SortedEntries,
    ) -> Result<(), StateError> {
        let enc_err = |detail| StateError::Encode { name: self.meta.name.clone(), detail };
        let map = &*self.groups[index];
        if let Some(order) = map.key_order() {
            if write_in_key_order(map, order, state_index, payload, buf.written().1).map_err(enc_err)? {
                return Ok(());
            }
            tracing::debug!(state = %self.meta.name, "a key group's recorded key order did not hold; sorting it");
        } else if let Some(since) = map.take_keys_since() {
            if let Some(base) = since.base_order() {
                if let Some(order) = write_merging(map, &since, base, state_index, payload, buf).map_err(enc_err)? {
                    map.set_key_order(order);
                    return Ok(());
                }
                tracing::debug!(state = %self.meta.name, "a key group's key order merged with its changes did not hold; sorting it");
            }
        }
        let push = |buf: &mut SortedEntries, tag: u32, k: &K, v: &V| {
            buf.push(tag, |b| codec::encode_into(k, b), |b| codec::encode_into(v, b)).map_err(enc_err)
        };
        // Wanted only where no order is recorded, so not after one that did not hold.
        if map.key_order_wanted() {
            buf.clear_tagged();
            let mut every_bucket_fits = true;
            for (bucket, k, v) in map.buckets() {
                every_bucket_fits &= bucket.is_some();
                push(buf, bucket.unwrap_or(0), k, v)?;
            }
            if every_bucket_fits && !buf.is_empty() {
                let mut order: Box<KeyOrder> = vec![0; buf.len()].into();
                let mut next = order.iter_mut();
                push_sorted_entries(payload, state_index, buf, |bucket| {
                    if let Some(slot) = next.next() {
                        *slot = bucket;
                    }
                });
                map.set_key_order(order);
                return Ok(());
            }
        } else {
            buf.clear();
            for (k, v) in map.iter() {
                push(buf, 0, k, v)?;
            }
        }
        push_sorted_entries(payload, state_index, buf, |_| ());
        Ok(())
    }
}

/// Entries ahead of the one written that [`write_in_key_order`] asks the cache for.
const PREFETCH_AHEAD: usize = 16;

/// Writes `map`'s entries in `order`, the key order a snapshot of the same keys recorded, instead
/// of sorting them again. The order is checked (each bucket occupied, each key's bytes above the
/// previous key's): false, and `payload` as it was, when it does not hold.
fn write_in_key_order<K: Key, V: StateData>(
    map: &KeyMap<K, V>,
    order: &KeyOrder,
    state_index: u16,
    payload: &mut Vec<u8>,
    starts: &mut Vec<u32>,
) -> Result<bool, String> {
    if order.len() != map.len() {
        return Ok(false);
    }
    let head = payload.len();
    push_state_head(payload, state_index, order.len());
    let entries_start = payload.len();
    if !write_buckets(map, order, payload, starts)? || !keys_ascend(&payload[entries_start..], starts) {
        payload.truncate(head);
        return Ok(false);
    }
    Ok(true)
}

/// Appends the entries of `buckets`, in that order, framed as a block payload frames them, and
/// sets `starts` to where each starts (from the end of `out` as it was). False when a bucket
/// holds no entry.
fn write_buckets<K: Key, V: StateData>(
    map: &KeyMap<K, V>,
    buckets: &[u32],
    out: &mut Vec<u8>,
    starts: &mut Vec<u32>,
) -> Result<bool, String> {
    starts.clear();
    let Some(cache) = map.bucket_prefetch() else {
        return Ok(buckets.is_empty());
    };
    let from = out.len();
    for (i, &bucket) in buckets.iter().enumerate() {
        if let Some(&ahead) = buckets.get(i + PREFETCH_AHEAD) {
            cache.prefetch(ahead);
        }
        let Some((k, v)) = map.entry_at(bucket) else {
            return Ok(false);
        };
        starts.push(u32::try_from(out.len() - from).map_err(|_| TooLarge)?);
        framed(out, |b| codec::encode_into(k, b))?;
        framed(out, |b| codec::encode_into(v, b))?;
    }
    Ok(true)
}

/// Writes `map`'s entries in key order from the order recorded for its keys before `since`'s
/// changes: the entries of that order whose keys did not go, merged with those that came,
/// sorted (few, or the changes would not have been kept). Returns the order written, for the
/// next snapshot; `None`, and `payload` as it was, when the result does not check out (as
/// [`write_in_key_order`] checks).
fn write_merging<K: Key, V: StateData>(
    map: &KeyMap<K, V>,
    since: &KeysSince,
    base: &KeyOrder,
    state_index: u16,
    payload: &mut Vec<u8>,
    buf: &mut SortedEntries,
) -> Result<Option<Box<KeyOrder>>, String> {
    let kept = without(base, &since.changes.removed);
    let mut added = since.changes.added.clone();
    added.sort_unstable();
    added.dedup();
    // Those whose keys are still there.
    let came: Vec<_> = added.into_iter().filter_map(|b| map.entry_at(b).map(|(k, v)| (b, k, v))).collect();
    // An empty key group writes nothing (see `push_sorted_entries`).
    if map.len() == 0 || kept.len() + came.len() != map.len() {
        return Ok(None);
    }
    // The entries that came, sorted, with their buckets.
    buf.clear_tagged();
    for &(bucket, k, v) in &came {
        buf.push(bucket, |b| codec::encode_into(k, b), |b| codec::encode_into(v, b))?;
    }
    let (mut fresh, mut fresh_order) = (Vec::new(), Vec::with_capacity(came.len()));
    buf.append_sorted(&mut fresh, |bucket| fresh_order.push(bucket));
    let fresh_starts = entry_starts(&fresh);
    // Those that stayed, in the recorded order.
    let (written, written_starts) = buf.written();
    written.clear();
    if !write_buckets(map, &kept, written, written_starts)? {
        return Ok(None);
    }
    let head = payload.len();
    push_state_head(payload, state_index, map.len());
    let entries_start = payload.len();
    let (mut starts, mut order) = (Vec::with_capacity(map.len()), Vec::with_capacity(map.len()));
    merge_framed((written, written_starts), (&fresh, &fresh_starts), payload, &mut starts, |from| {
        order.push(match from {
            Merged::Many(i) => kept[i],
            Merged::Few(j) => fresh_order[j],
        })
    })?;
    if !keys_ascend(&payload[entries_start..], &starts) {
        payload.truncate(head);
        return Ok(None);
    }
    Ok(Some(order.into_boxed_slice()))
}

/// `order` without the buckets in `removed`.
fn without(order: &KeyOrder, removed: &[u32]) -> Vec<u32> {
    let Some(&last) = removed.iter().max() else { return order.to_vec() };
    let mut gone = vec![0u64; last as usize / 64 + 1];
    removed.iter().for_each(|&b| gone[b as usize / 64] |= 1 << (b % 64));
    let went = |b: u32| gone.get(b as usize / 64).is_some_and(|w| w & (1 << (b % 64)) != 0);
    order.iter().copied().filter(|&b| !went(b)).collect()
}

/// Restored state not (yet) declared by the operator: kept as bytes, and written into later
/// snapshots unchanged, so nothing is lost when an operator stops declaring a state for a while.
struct RawTable {
    meta: StateMeta,
    groups: Arc<Vec<Entries>>,
}

impl TableSnapshot for RawTable {
    fn meta(&self) -> &StateMeta {
        &self.meta
    }
    fn group_len(&self, index: usize) -> usize {
        self.groups[index].len()
    }
    fn write_group(
        &self,
        index: usize,
        state_index: u16,
        payload: &mut Vec<u8>,
        buf: &mut SortedEntries,
    ) -> Result<(), StateError> {
        buf.clear();
        for (k, v) in self.groups[index].iter() {
            buf.push_bytes(&[k], v)
                .map_err(|e| StateError::Encode { name: self.meta.name.clone(), detail: e.to_string() })?;
        }
        push_sorted_entries(payload, state_index, buf, |_| ());
        Ok(())
    }
}

/// A timer queue's key groups, frozen for a snapshot. Each key group's timers are already in byte
/// order, the order a state file wants.
struct FrozenTimers {
    meta: StateMeta,
    groups: Vec<Arc<std::collections::BTreeSet<Vec<u8>>>>,
}

impl TableSnapshot for FrozenTimers {
    fn meta(&self) -> &StateMeta {
        &self.meta
    }
    fn group_len(&self, index: usize) -> usize {
        self.groups[index].len()
    }
    fn write_group(
        &self,
        index: usize,
        state_index: u16,
        payload: &mut Vec<u8>,
        _buf: &mut SortedEntries,
    ) -> Result<(), StateError> {
        let group = &self.groups[index];
        push_entries(payload, state_index, group.iter().map(|t| (t.as_slice(), &[][..])));
        Ok(())
    }
}

/// Entries of the keyed states beyond which records are not batched: about the size of a core's
/// second-level cache.
const BATCHING_MAX_BYTES: usize = 1 << 20;

/// Keyed state of one operator subtask: the key groups it owns, its declared states and timers.
pub struct HeapKeyedBackend<K> {
    max_parallelism: u32,
    key_groups: KeyGroupRange,
    tables: Vec<Box<dyn AnyTable<K>>>,
    /// The type of each table, so a lookup checks it without a virtual call (`dyn Any`'s
    /// `type_id`, two per record of the reference benchmark, cost about 3 % of its time).
    table_types: Vec<TypeId>,
    by_name: HashMap<String, usize>,
    restored: BTreeMap<String, RawTable>,
    pub(crate) timers: TimerQueues,
}

impl<K: Key> HeapKeyedBackend<K> {
    pub fn new(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        HeapKeyedBackend {
            max_parallelism,
            key_groups,
            tables: Vec::new(),
            table_types: Vec::new(),
            by_name: HashMap::new(),
            restored: BTreeMap::new(),
            timers: TimerQueues::new(key_groups),
        }
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.key_groups
    }

    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// Reads the key groups this backend owns from the restored state files (each checked once
    /// per restore, with the other subtasks). Call before declaring states. A large state is read
    /// on every core, each reading a contiguous chunk of the key groups: nothing else runs while
    /// a job restores.
    pub fn restore(&mut self, restored: &RestoredKeyedState) -> Result<(), StateError> {
        let range = self.key_groups;
        let bytes: u64 = restored.files.iter().map(|(_, handle)| handle.file.size).sum();
        let chunks = if bytes >= PARALLEL_RESTORE_BYTES { parallel::threads() * CHUNKS_PER_THREAD } else { 1 };
        verify_files(&restored.files, &restored.checked)?;
        let chunks = parallel::for_each_chunk(range, chunks, |_, chunk| {
            let mut states: BTreeMap<String, (StateMeta, Vec<Entries>)> = BTreeMap::new();
            read_key_groups(&restored.files, chunk, &restored.checked, &mut |_, meta, kg, state| {
                let (_, groups) = states
                    .entry(meta.name.clone())
                    .or_insert_with(|| (meta.clone(), vec![Entries::default(); chunk.count as usize]));
                groups[(kg - chunk.start) as usize].extend(state);
                Ok(())
            })?;
            Ok((chunk, states))
        })?;
        let mut raw: BTreeMap<String, (StateMeta, Vec<Entries>)> = BTreeMap::new();
        for (chunk, states) in chunks {
            for (name, (meta, groups)) in states {
                let (_, all) =
                    raw.entry(name).or_insert_with(|| (meta, vec![Entries::default(); range.count as usize]));
                let at = (chunk.start - range.start) as usize;
                for (slot, group) in all[at..].iter_mut().zip(groups) {
                    *slot = group;
                }
            }
        }
        for (name, (meta, groups)) in raw {
            self.restored.insert(name, RawTable { meta, groups: Arc::new(groups) });
        }
        Ok(())
    }

    fn register<V: StateData>(&mut self, meta: StateMeta, reduce: Option<ReduceFn<V>>) -> Result<usize, StateError> {
        let name = meta.name.as_str();
        if let Some(&slot) = self.by_name.get(name) {
            let table = &self.tables[slot];
            if *table.meta() != meta || (&**table as &dyn Any).downcast_ref::<Table<K, V>>().is_none() {
                return Err(StateError::DuplicateName { name: name.to_string() });
            }
            return Ok(slot);
        }
        let groups = match self.restored.remove(name) {
            Some(raw) => {
                if let Err(detail) = meta.check_restored(&raw.meta) {
                    self.restored.insert(name.to_string(), raw);
                    return Err(StateError::Incompatible(detail));
                }
                self.decode_restored(name, &raw.groups)?
            }
            None => (0..self.key_groups.count).map(|_| KeyMap::default()).collect(),
        };
        let name = name.to_string();
        let entries = groups.iter().map(KeyMap::len).sum();
        let table = Table::<K, V> { meta, groups: groups.into_iter().map(Group::Owned).collect(), reduce, entries };
        self.tables.push(Box::new(table));
        self.table_types.push(TypeId::of::<Table<K, V>>());
        self.by_name.insert(name, self.tables.len() - 1);
        Ok(self.tables.len() - 1)
    }

    /// The maps of a restored state's key groups, decoded on every core when they are many.
    fn decode_restored<V: StateData>(&self, name: &str, raw: &[Entries]) -> Result<Vec<KeyMap<K, V>>, StateError> {
        let (range, max_parallelism) = (self.key_groups, self.max_parallelism);
        let entries: usize = raw.iter().map(Entries::len).sum();
        let chunks = if entries >= PARALLEL_ENTRIES { parallel::threads() * CHUNKS_PER_THREAD } else { 1 };
        let chunks = parallel::for_each_chunk(range, chunks, |_, chunk| {
            chunk
                .iter()
                .map(|kg| decode_group(name, kg, &raw[(kg - range.start) as usize], max_parallelism))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// Declares a state holding `V` per key; returns its slot.
    pub(crate) fn declare<V: StateData>(
        &mut self,
        meta: StateMeta,
        reduce: Option<ReduceFn<V>>,
    ) -> Result<usize, StateError> {
        self.register::<V>(meta, reduce)
    }

    /// Declares a timer queue; returns its index. Restored timers of that name are checked and
    /// loaded.
    pub(crate) fn declare_timers(&mut self, name: &str) -> Result<usize, StateError> {
        if let Some(q) = self.timers.find(name) {
            return Ok(q);
        }
        let mut restored = Vec::new();
        if let Some(raw) = self.restored.remove(name) {
            if let Err(detail) = StateMeta::new(name, StateKind::Timers).check_restored(&raw.meta) {
                self.restored.insert(name.to_string(), raw);
                return Err(StateError::Incompatible(detail));
            }
            for (local, entries) in raw.groups.iter().enumerate() {
                let kg = self.key_groups.start + local as u32;
                restored.extend(entries.iter().map(|(timer, _)| (kg, timer.to_vec())));
            }
        }
        self.timers.add::<K>(name, 0, restored, self.max_parallelism)
    }

    /// Whether a keyed operator gains from holding records back in batches and locating their
    /// keys together ([`Self::locate`]) before it processes them: while its states fit in a
    /// core's faster caches, so a record's wait is its hash chain, which the batch overlaps.
    /// Larger state waits on memory, and there holding records back loses: measured, the
    /// reference shape (1000 keys) gained 15-20 %, 10^6 keys lost a quarter. Every state counts,
    /// whatever the function does with it: on the heap a write probes the table as a read does.
    pub(crate) fn batching_pays(&self) -> bool {
        self.tables.iter().map(|t| t.footprint()).sum::<usize>() <= BATCHING_MAX_BYTES
    }

    /// Where `key`'s state is: its key group and its in-memory hash.
    #[inline]
    pub(crate) fn locate(&self, key: &K) -> crate::backend::KeyLocation {
        let key_hash = key.key_hash();
        crate::backend::KeyLocation::new(
            key_group_for_hash(key_hash, self.max_parallelism),
            hash_key_with(key, || key_hash),
        )
    }

    /// Scopes state access to `key`, located by the keyed backend (key group and hash). Fails
    /// when the key does not belong to this subtask, which would mean a routing bug.
    #[inline(always)]
    pub(crate) fn scope_at<'a>(
        &'a mut self,
        key: &'a K,
        at: crate::backend::KeyLocation,
    ) -> Result<HeapScope<'a, K>, StateError> {
        let (kg, hash) = at.parts();
        match self.key_groups.offset_of(kg) {
            Some(group) => Ok(HeapScope { backend: self, key, group, hash }),
            None => Err(StateError::MisroutedKey { key_group: kg, owned: self.key_groups }),
        }
    }

    /// The synchronous part of a snapshot: freezes every key group (pointer copies).
    pub fn snapshot(&mut self) -> HeapSnapshot {
        let mut tables: Vec<Box<dyn TableSnapshot>> = self.tables.iter_mut().map(|t| t.snapshot()).collect();
        for raw in self.restored.values() {
            tables.push(Box::new(RawTable { meta: raw.meta.clone(), groups: raw.groups.clone() }));
        }
        for q in &self.timers.queues {
            let groups = (0..q.timers.group_count()).map(|g| q.timers.group(g)).collect();
            tables.push(Box::new(FrozenTimers { meta: q.meta.clone(), groups }));
        }
        tables.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        HeapSnapshot { key_groups: self.key_groups, tables }
    }

    #[inline]
    fn table<V: 'static>(&self, slot: usize) -> &Table<K, V> {
        self.check_type::<V>(slot);
        let table: *const dyn AnyTable<K> = &*self.tables[slot];
        // SAFETY: the table in `slot` is a `Table<K, V>`: its type was recorded when it was
        // registered and checked just above (what `downcast_ref` does, minus its virtual call).
        unsafe { &*(table as *const Table<K, V>) }
    }

    #[inline]
    fn table_mut<V: 'static>(&mut self, slot: usize) -> &mut Table<K, V> {
        self.check_type::<V>(slot);
        let table: *mut dyn AnyTable<K> = &mut *self.tables[slot];
        // SAFETY: as in `table`, the table in `slot` is a `Table<K, V>`.
        unsafe { &mut *(table as *mut Table<K, V>) }
    }

    #[inline]
    fn check_type<V: 'static>(&self, slot: usize) {
        if self.table_types.get(slot) != Some(&TypeId::of::<Table<K, V>>()) {
            panic!("state handle used with another operator's keyed state");
        }
    }
}

/// Heap state access for the current key, hashed once for all of a record's lookups.
pub(crate) struct HeapScope<'a, K> {
    backend: &'a mut HeapKeyedBackend<K>,
    key: &'a K,
    group: usize,
    hash: u64,
}

impl<K: Key> HeapScope<'_, K> {
    pub(crate) fn key(&self) -> &K {
        self.key
    }

    pub(crate) fn key_group(&self) -> u32 {
        self.backend.key_groups.start + self.group as u32
    }

    /// The bytes of a timer of the current key.
    pub(crate) fn timer(&self, timestamp: i64, namespace: &[u8]) -> Result<Vec<u8>, StateError> {
        let key = codec::encode(self.key).map_err(|detail| StateError::Encode { name: "<key>".into(), detail })?;
        Ok(crate::timers::timer_bytes(timestamp, &key, namespace))
    }

    pub(crate) fn timers(&mut self) -> &mut TimerQueues {
        &mut self.backend.timers
    }

    #[inline]
    pub(crate) fn get<V: StateData>(&self, slot: usize) -> Option<&V> {
        self.backend.table::<V>(slot).groups[self.group].map().get(self.hash, self.key)
    }

    /// The current key's value of `slot`, inserted with `init` when it has none.
    #[inline]
    pub(crate) fn entry<V: StateData>(&mut self, slot: usize, init: impl FnOnce() -> V) -> &mut V {
        let (key, group, hash) = (self.key, self.group, self.hash);
        self.backend.table_mut::<V>(slot).get_or_insert_with(group, hash, key, init)
    }

    #[inline]
    pub(crate) fn put<V: StateData>(&mut self, slot: usize, value: V) {
        let (key, group, hash) = (self.key, self.group, self.hash);
        let table = self.backend.table_mut::<V>(slot);
        match table.groups[group].map_mut().get_mut(hash, key) {
            Some(v) => *v = value,
            None => table.insert_new(group, hash, key.clone(), value),
        }
    }

    pub(crate) fn remove<V: StateData>(&mut self, slot: usize) -> Option<V> {
        let (key, group, hash) = (self.key, self.group, self.hash);
        self.backend.table_mut::<V>(slot).remove(group, hash, key)
    }

    /// Changes the current key's namespaces of `slot` in place, with one hash lookup when the key
    /// has some; a key left without namespaces is removed.
    #[inline]
    pub(crate) fn update_namespaces<N: StateData + Ord, V: StateData>(
        &mut self,
        slot: usize,
        f: impl FnOnce(&mut VecMap<N, V>),
    ) {
        let (key, group, hash) = (self.key, self.group, self.hash);
        let table = self.backend.table_mut::<VecMap<N, V>>(slot);
        match table.groups[group].map_mut().get_mut(hash, key) {
            Some(entries) => {
                f(entries);
                if entries.is_empty() {
                    table.remove(group, hash, key);
                }
            }
            None => {
                let mut entries = VecMap::default();
                f(&mut entries);
                if !entries.is_empty() {
                    table.insert_new(group, hash, key.clone(), entries);
                }
            }
        }
    }

    pub(crate) fn reduce_fn<V: StateData>(&self, slot: usize) -> Option<ReduceFn<V>> {
        self.backend.table::<V>(slot).reduce.clone()
    }
}

/// Entries from which a snapshot's key groups are encoded, or a restore's decoded, on several
/// threads: below, starting threads costs more than it saves (a checkpoint of a small state every
/// second).
const PARALLEL_ENTRIES: usize = 1 << 16;

/// Bytes of state files from which a restore reads them on several threads.
const PARALLEL_RESTORE_BYTES: u64 = 1 << 20;

/// Chunks per core a restore's key groups are cut into, so that subtasks restoring at once
/// share the cores evenly whatever their sizes.
const CHUNKS_PER_THREAD: usize = 4;

/// One restored key group's map, each key checked to belong to key group `kg`. Keys and values
/// are all decoded first, then inserted (see [`KeyMap::insert_all`]).
fn decode_group<K: Key, V: StateData>(
    name: &str,
    kg: u32,
    entries: &Entries,
    max_parallelism: u32,
) -> Result<KeyMap<K, V>, StateError> {
    let decode_err = |what, detail| StateError::Decode { name: name.to_string(), key_group: kg, what, detail };
    let mut hashes = Vec::with_capacity(entries.len());
    let mut decoded = Vec::with_capacity(entries.len());
    for (kb, vb) in entries.iter() {
        let key: K = codec::decode(kb).map_err(|d| decode_err("key", d))?;
        let actual = assign_to_key_group(&key, max_parallelism);
        if actual != kg {
            return Err(StateError::KeyGroupMismatch { name: name.to_string(), stored: kg, actual });
        }
        let value: V = codec::decode(vb).map_err(|d| decode_err("value", d))?;
        hashes.push(hash_key(&key));
        decoded.push((key, value));
    }
    let mut map = KeyMap::default();
    map.insert_all(&hashes, decoded);
    Ok(map)
}

/// A frozen snapshot of a keyed backend, written to a state file off the task thread.
pub struct HeapSnapshot {
    key_groups: KeyGroupRange,
    tables: Vec<Box<dyn TableSnapshot>>,
}

impl HeapSnapshot {
    /// True when no state holds any entry: such a snapshot writes no file.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| (0..self.key_groups.count as usize).all(|i| t.group_len(i) == 0))
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.key_groups
    }

    /// Writes the state file; returns the writer and what was written.
    pub fn write<W: Write>(&self, out: W) -> Result<(W, crate::format::WrittenFile), StateError> {
        let header =
            FileHeader { key_groups: self.key_groups, states: self.tables.iter().map(|t| t.meta().clone()).collect() };
        let mut writer = StateFileWriter::new(out, &header).map_err(StateError::Write)?;
        let groups = self.key_groups.count as usize;
        let entries: usize = self.tables.iter().map(|t| (0..groups).map(|g| t.group_len(g)).sum::<usize>()).sum();
        writer.write_key_groups(groups, entries >= PARALLEL_ENTRIES, &|| {
            let mut buf = SortedEntries::default();
            move |local, payload: &mut Vec<u8>| {
                for (index, table) in self.tables.iter().enumerate() {
                    table.write_group(local, index as u16, payload, &mut buf)?;
                }
                Ok(())
            }
        })?;
        writer.finish().map_err(StateError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KeyedStateBackend;
    use crate::descriptors::*;
    use std::path::PathBuf;
    use weir_core::key_group::key_group_range_for_subtask;
    use weir_core::metadata::KeyedStateHandle;

    fn heap<K: Key>(max_p: u32, range: KeyGroupRange) -> KeyedStateBackend<K> {
        KeyedStateBackend::Heap(HeapKeyedBackend::new(max_p, range))
    }

    fn restored<K: Key>(
        max_p: u32,
        range: KeyGroupRange,
        files: &[(PathBuf, KeyedStateHandle)],
    ) -> KeyedStateBackend<K> {
        let mut b = HeapKeyedBackend::new(max_p, range);
        b.restore(&RestoredKeyedState { files: files.to_vec(), ..Default::default() }).unwrap();
        KeyedStateBackend::Heap(b)
    }

    fn frozen<K: Key>(backend: &mut KeyedStateBackend<K>) -> HeapSnapshot {
        match backend {
            KeyedStateBackend::Heap(h) => h.snapshot(),
            KeyedStateBackend::Serialized(_) => unreachable!("heap tests"),
        }
    }

    fn write_snapshot<K: Key>(
        backend: &mut KeyedStateBackend<K>,
        dir: &std::path::Path,
        name: &str,
    ) -> (PathBuf, KeyedStateHandle) {
        write_frozen(&frozen(backend), dir, name)
    }

    /// Each table's counted entries, which must be the entries its key groups hold.
    fn counted_entries<K: Key>(backend: &KeyedStateBackend<K>) -> Vec<usize> {
        let KeyedStateBackend::Heap(h) = backend else { unreachable!("heap tests") };
        h.tables
            .iter()
            .map(|t| {
                let (counted, held) = t.entries_counted_and_held();
                assert_eq!(counted, held, "state '{}': entries counted vs held", t.meta().name);
                counted
            })
            .collect()
    }

    #[test]
    fn entries_are_counted_through_every_change_and_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::inclusive(0, 127);
        let mut b = heap::<u64>(128, range);
        let value = b.value_state(&ValueStateDescriptor::<u64>::new("value")).unwrap();
        let list = b.list_state(&ListStateDescriptor::<u64>::new("list")).unwrap();
        let windows = b.namespaced_state::<u64, u64>("windows", "window:test").unwrap();
        for k in 0..100u64 {
            let mut s = b.scope(&k).unwrap();
            value.update(&mut s, k).unwrap();
            value.update(&mut s, k + 1).unwrap();
            list.add(&mut s, k).unwrap();
            list.add(&mut s, k).unwrap();
            windows.compute(&mut s, 1, |_| Some(k)).unwrap();
            windows.compute(&mut s, 2, |_| Some(k)).unwrap();
        }
        assert_eq!(counted_entries(&b), vec![100, 100, 100]);
        // A snapshot shares the key groups; writes after it take them back, counted alike.
        let _snapshot = frozen(&mut b);
        for k in 0..30u64 {
            let mut s = b.scope(&k).unwrap();
            value.clear(&mut s).unwrap();
            value.clear(&mut s).unwrap();
            list.clear(&mut s).unwrap();
            windows.remove(&mut s, &1).unwrap();
            windows.remove(&mut s, &2).unwrap();
            windows.remove(&mut s, &2).unwrap();
        }
        assert_eq!(counted_entries(&b), vec![70, 70, 70]);
        let files = [write_snapshot(&mut b, dir.path(), "counted")];
        let mut restored = restored::<u64>(128, range, &files);
        restored.value_state(&ValueStateDescriptor::<u64>::new("value")).unwrap();
        restored.list_state(&ListStateDescriptor::<u64>::new("list")).unwrap();
        restored.namespaced_state::<u64, u64>("windows", "window:test").unwrap();
        assert_eq!(counted_entries(&restored), vec![70, 70, 70]);
    }

    fn write_frozen(snap: &HeapSnapshot, dir: &std::path::Path, name: &str) -> (PathBuf, KeyedStateHandle) {
        let path = dir.join(name);
        let (_, written) = snap.write(std::fs::File::create(&path).unwrap()).unwrap();
        (path, written.into_handle(name.into(), snap.key_groups()))
    }

    #[test]
    fn every_state_kind_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut b: KeyedStateBackend<String> = heap(128, KeyGroupRange::inclusive(0, 127));
        let count = b.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        let seen = b.list_state(&ListStateDescriptor::<String>::new("seen")).unwrap();
        let attrs = b.map_state(&MapStateDescriptor::<String, i32>::new("attrs")).unwrap();
        let total = b.reducing_state(&ReducingStateDescriptor::new("total", |a: &i64, b: &i64| a + b)).unwrap();
        for (i, key) in ["a", "b", "a", "c"].iter().enumerate() {
            let key = key.to_string();
            let mut s = b.scope(&key).unwrap();
            let n = count.value(&mut s).unwrap().unwrap_or(0);
            count.update(&mut s, n + 1).unwrap();
            seen.add(&mut s, format!("r{i}")).unwrap();
            attrs.put(&mut s, "i".into(), i as i32).unwrap();
            total.add(&mut s, 10).unwrap();
        }
        let (path, handle) = write_snapshot(&mut b, dir.path(), "f");

        let mut r: KeyedStateBackend<String> = restored(128, KeyGroupRange::inclusive(0, 127), &[(path, handle)]);
        let count = r.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        let seen = r.list_state(&ListStateDescriptor::<String>::new("seen")).unwrap();
        let attrs = r.map_state(&MapStateDescriptor::<String, i32>::new("attrs")).unwrap();
        let total = r.reducing_state(&ReducingStateDescriptor::new("total", |a: &i64, b: &i64| a + b)).unwrap();
        let a = "a".to_string();
        let mut s = r.scope(&a).unwrap();
        assert_eq!(count.value(&mut s).unwrap(), Some(2));
        assert_eq!(seen.get(&mut s).unwrap(), vec!["r0".to_string(), "r2".to_string()]);
        assert_eq!(attrs.get(&mut s, &"i".to_string()).unwrap(), Some(2));
        assert_eq!(total.get(&mut s).unwrap(), Some(20));
    }

    #[test]
    fn snapshot_is_isolated_from_later_writes() {
        let mut b: KeyedStateBackend<u64> = heap(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..1000u64 {
            v.update(&mut b.scope(&k).unwrap(), 1).unwrap();
        }
        let snap = frozen(&mut b);
        for k in 0..1000u64 {
            v.update(&mut b.scope(&k).unwrap(), 2).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let file = write_frozen(&snap, dir.path(), "f");
        let mut r: KeyedStateBackend<u64> = restored(128, KeyGroupRange::inclusive(0, 127), &[file]);
        let v = r.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..1000u64 {
            assert_eq!(v.value(&mut r.scope(&k).unwrap()).unwrap(), Some(1), "key {k}");
        }
    }

    #[test]
    fn rescale_restores_each_key_on_exactly_one_subtask() {
        let dir = tempfile::tempdir().unwrap();
        let max_p = 13;
        let mut files = vec![];
        for i in 0..3 {
            let range = key_group_range_for_subtask(max_p, 3, i);
            let mut b: KeyedStateBackend<u64> = heap(max_p, range);
            let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
            for k in 0..500u64 {
                if let Ok(mut s) = b.scope(&k) {
                    v.update(&mut s, k * 10).unwrap();
                }
            }
            files.push(write_snapshot(&mut b, dir.path(), &format!("f{i}")));
        }
        let mut found = vec![0; 500];
        for j in 0..2 {
            let range = key_group_range_for_subtask(max_p, 2, j);
            let handles: Vec<_> =
                files.iter().filter_map(|(p, h)| h.intersection(&range).map(|h| (p.clone(), h))).collect();
            let mut b: KeyedStateBackend<u64> = restored(max_p, range, &handles);
            let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
            for k in 0..500u64 {
                if let Ok(mut s) = b.scope(&k) {
                    assert_eq!(v.value(&mut s).unwrap(), Some(k * 10));
                    found[k as usize] += 1;
                }
            }
        }
        assert!(found.iter().all(|&n| n == 1));
    }

    /// A state large enough to be read and decoded in chunks on every core comes back as it was
    /// written by three subtasks, whole or split over two, also a state whose entries only some
    /// chunks hold (and files only some chunks need).
    #[test]
    fn a_large_state_restores_in_chunks_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (max_p, keys) = (128, 3 * PARALLEL_ENTRIES as u64);
        let in_late_groups = |k: &u64| assign_to_key_group(k, max_p) >= 100;
        let mut files = vec![];
        for i in 0..3 {
            let mut b: KeyedStateBackend<u64> = heap(max_p, key_group_range_for_subtask(max_p, 3, i));
            let count = b.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
            let late = b.list_state(&ListStateDescriptor::<u64>::new("late")).unwrap();
            for k in 0..keys {
                let Ok(mut s) = b.scope(&k) else { continue };
                count.update(&mut s, k * 3).unwrap();
                if in_late_groups(&k) {
                    late.add(&mut s, k).unwrap();
                }
            }
            files.push(write_snapshot(&mut b, dir.path(), &format!("f{i}")));
        }
        let mut found = vec![0u8; keys as usize];
        for p in [1, 2] {
            for i in 0..p {
                let range = key_group_range_for_subtask(max_p, p, i);
                let handles: Vec<_> =
                    files.iter().filter_map(|(path, h)| h.intersection(&range).map(|h| (path.clone(), h))).collect();
                let bytes: u64 = handles.iter().map(|(_, h)| h.file.size).sum();
                assert!(bytes >= PARALLEL_RESTORE_BYTES, "read in chunks");
                let mut r: KeyedStateBackend<u64> = restored(max_p, range, &handles);
                let count = r.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
                let late = r.list_state(&ListStateDescriptor::<u64>::new("late")).unwrap();
                assert!(counted_entries(&r).iter().sum::<usize>() >= PARALLEL_ENTRIES, "decoded in chunks");
                for k in 0..keys {
                    let Ok(mut s) = r.scope(&k) else { continue };
                    assert_eq!(count.value(&mut s).unwrap(), Some(k * 3), "key {k} at p={p}");
                    let expected: Vec<u64> = if in_late_groups(&k) { vec![k] } else { vec![] };
                    assert_eq!(late.get(&mut s).unwrap(), expected, "key {k} at p={p}");
                    found[k as usize] += 1;
                }
            }
        }
        assert!(found.iter().all(|&n| n == 2), "every key restored once at each parallelism");
    }

    /// Keys read back under another max parallelism fall into other key groups: refused, naming
    /// the first key group in order whichever chunk fails first.
    #[test]
    fn keys_of_another_max_parallelism_are_refused_at_the_first_key_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut b: KeyedStateBackend<u64> = heap(128, KeyGroupRange::inclusive(0, 127));
        let count = b.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        for k in 0..2 * PARALLEL_ENTRIES as u64 {
            count.update(&mut b.scope(&k).unwrap(), k).unwrap();
        }
        let file = write_snapshot(&mut b, dir.path(), "f");
        for _ in 0..3 {
            let mut r: KeyedStateBackend<u64> =
                restored(256, KeyGroupRange::inclusive(0, 127), std::slice::from_ref(&file));
            match r.value_state(&ValueStateDescriptor::<u64>::new("count")).err() {
                Some(StateError::KeyGroupMismatch { name, stored: 0, actual: 128 }) => assert_eq!(name, "count"),
                other => panic!("expected a mismatch in key group 0, got {other:?}"),
            }
        }
    }

    #[test]
    fn incompatible_types_and_kinds_are_refused_with_the_state_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut b: KeyedStateBackend<String> = heap(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<String>::new("name")).unwrap();
        let k = "k".to_string();
        v.update(&mut b.scope(&k).unwrap(), "text".into()).unwrap();
        let file = write_snapshot(&mut b, dir.path(), "f");

        let mut r: KeyedStateBackend<String> =
            restored(128, KeyGroupRange::inclusive(0, 127), std::slice::from_ref(&file));
        let err = r.value_state(&ValueStateDescriptor::<u64>::new("name")).err().unwrap().to_string();
        assert!(err.contains("'name'") && err.contains("value type"), "{err}");

        let mut r: KeyedStateBackend<String> = restored(128, KeyGroupRange::inclusive(0, 127), &[file]);
        let err = r.list_state(&ListStateDescriptor::<String>::new("name")).err().unwrap().to_string();
        assert!(err.contains("declared as list state but the restored state is value state"), "{err}");
    }

    #[test]
    fn undeclared_restored_state_is_carried_into_the_next_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut b: KeyedStateBackend<String> = heap(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<u64>::new("kept")).unwrap();
        let k = "k".to_string();
        v.update(&mut b.scope(&k).unwrap(), 5).unwrap();
        let file = write_snapshot(&mut b, dir.path(), "f1");
        let mut mid: KeyedStateBackend<String> = restored(128, KeyGroupRange::inclusive(0, 127), &[file]);
        let file = write_snapshot(&mut mid, dir.path(), "f2");
        let mut last: KeyedStateBackend<String> = restored(128, KeyGroupRange::inclusive(0, 127), &[file]);
        let v = last.value_state(&ValueStateDescriptor::<u64>::new("kept")).unwrap();
        assert_eq!(v.value(&mut last.scope(&k).unwrap()).unwrap(), Some(5));
    }

    #[test]
    fn the_same_state_always_writes_the_same_bytes() {
        let write = |keys: Vec<String>| {
            let mut b: KeyedStateBackend<String> = heap(128, KeyGroupRange::inclusive(0, 127));
            let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
            for k in keys {
                let n = k.len() as u64;
                v.update(&mut b.scope(&k).unwrap(), n).unwrap();
            }
            frozen(&mut b).write(Vec::new()).unwrap().0
        };
        // Keys sharing 8-byte prefixes, of different lengths, inserted in opposite orders.
        let keys: Vec<String> =
            (0..2000).map(|i| format!("common-prefix-{}", "x".repeat(i % 13)) + &i.to_string()).collect();
        let mut reversed = keys.clone();
        reversed.reverse();
        assert_eq!(write(keys), write(reversed));
    }

    /// Each key group's recorded key order of the value state "v" (declared first): its length,
    /// or `None` where no snapshot recorded one.
    fn key_orders(backend: &KeyedStateBackend<u64>) -> Vec<Option<usize>> {
        let KeyedStateBackend::Heap(h) = backend else { unreachable!("heap tests") };
        h.table::<u64>(0).groups.iter().map(|g| g.map().key_order().map(<[u32]>::len)).collect()
    }

    /// The bytes a snapshot of `values` writes when nothing was recorded before: sorted afresh.
    fn written_afresh(values: &BTreeMap<u64, u64>) -> Vec<u8> {
        let mut b = heap::<u64>(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for (&k, &value) in values {
            v.update(&mut b.scope(&k).unwrap(), value).unwrap();
        }
        frozen(&mut b).write(Vec::new()).unwrap().0
    }

    /// Whether every non-empty key group of "v" has a recorded order that holds for its keys.
    fn written_in_recorded_orders(backend: &KeyedStateBackend<u64>) -> bool {
        let KeyedStateBackend::Heap(h) = backend else { unreachable!("heap tests") };
        h.table::<u64>(0).groups.iter().filter(|g| g.map().len() > 0).all(|g| {
            let map = g.map();
            map.key_order()
                .is_some_and(|order| write_in_key_order(map, order, 0, &mut Vec::new(), &mut Vec::new()).unwrap())
        })
    }

    /// A heap backend whose value state "v" holds `k` for each key `k` below `keys`, and those values.
    fn counted_keys(keys: u64) -> (KeyedStateBackend<u64>, ValueState<u64>, BTreeMap<u64, u64>) {
        let mut b = heap::<u64>(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..keys {
            v.update(&mut b.scope(&k).unwrap(), k).unwrap();
        }
        (b, v, (0..keys).map(|k| (k, k)).collect())
    }

    #[test]
    fn snapshots_write_in_recorded_key_orders_as_keys_hold_still_or_change_little() {
        let (mut b, v, mut values) = counted_keys(5000);
        let snapshot_matches = |b: &mut KeyedStateBackend<u64>, values: &BTreeMap<u64, u64>| {
            assert_eq!(frozen(b).write(Vec::new()).unwrap().0, written_afresh(values));
        };
        // Keys came before the first snapshot: it records nothing; the second, the keys having
        // held still since, records every key group's order.
        snapshot_matches(&mut b, &values);
        assert!(key_orders(&b).iter().all(Option::is_none), "keys came before the first snapshot");
        snapshot_matches(&mut b, &values);
        let KeyedStateBackend::Heap(h) = &b else { unreachable!() };
        let lens: Vec<usize> = h.table::<u64>(0).groups.iter().map(|g| g.map().len()).collect();
        assert_eq!(key_orders(&b), lens.iter().map(|&n| Some(n)).collect::<Vec<_>>(), "every key group recorded");
        assert!(written_in_recorded_orders(&b));
        // New values in place keep the order; a snapshot held while they are written (so the task
        // copies its key groups) still writes what the state held when it was taken.
        let held = frozen(&mut b);
        let before = written_afresh(&values);
        for k in (0..5000u64).step_by(3) {
            v.update(&mut b.scope(&k).unwrap(), k * 10).unwrap();
            values.insert(k, k * 10);
        }
        assert_eq!(held.write(Vec::new()).unwrap().0, before);
        assert!(written_in_recorded_orders(&b), "values changed in place keep the order");
        snapshot_matches(&mut b, &values);
        // A key that comes and one that goes are merged into their key groups' orders by the
        // next snapshot, which records the orders merged.
        let (new_key, gone_key) = (1_000_000u64, 17u64);
        v.update(&mut b.scope(&new_key).unwrap(), 1).unwrap();
        v.clear(&mut b.scope(&gone_key).unwrap()).unwrap();
        values.insert(new_key, 1);
        values.remove(&gone_key);
        snapshot_matches(&mut b, &values);
        assert!(written_in_recorded_orders(&b), "orders merged with the keys that came and went");
        // A key group that gains a key between every two snapshots, or loses one, stays in order.
        let churning = assign_to_key_group(&2_000_000u64, 128);
        let mut keys = (2_000_000u64..).filter(|k| assign_to_key_group(k, 128) == churning);
        for key in keys.by_ref().take(4) {
            v.update(&mut b.scope(&key).unwrap(), key).unwrap();
            values.insert(key, key);
            let gone = *values.keys().find(|&&k| k < 2_000_000 && assign_to_key_group(&k, 128) == churning).unwrap();
            v.clear(&mut b.scope(&gone).unwrap()).unwrap();
            values.remove(&gone);
            snapshot_matches(&mut b, &values);
            assert!(written_in_recorded_orders(&b), "key {key} came, {gone} went");
        }
        // Keys replaced wholesale are not worth merging: that key group sorts and records nothing
        // until its keys hold still (or change little) from one snapshot to the next.
        let old: Vec<u64> = values.keys().copied().filter(|k| assign_to_key_group(k, 128) == churning).collect();
        for (gone, new) in old.iter().zip(keys.by_ref()) {
            v.clear(&mut b.scope(gone).unwrap()).unwrap();
            values.remove(gone);
            v.update(&mut b.scope(&new).unwrap(), new).unwrap();
            values.insert(new, new);
        }
        snapshot_matches(&mut b, &values);
        assert_eq!(key_orders(&b)[churning as usize], None, "nothing recorded after keys replaced wholesale");
        snapshot_matches(&mut b, &values);
        assert_eq!(key_orders(&b)[churning as usize], Some(old.len()), "recorded once they held still");
        assert!(written_in_recorded_orders(&b));
    }

    /// Each key group whose keys came and went since its order was recorded writes, from that
    /// order and its changes, the bytes sorting it writes, and records its keys' order.
    #[test]
    fn keys_that_came_and_went_are_merged_into_the_recorded_order() {
        let (mut b, v, _) = counted_keys(5000);
        for _ in 0..2 {
            frozen(&mut b).write(Vec::new()).unwrap();
        }
        for k in 0..300u64 {
            v.update(&mut b.scope(&(10_000 + k)).unwrap(), k).unwrap();
            v.clear(&mut b.scope(&k).unwrap()).unwrap();
            // One that comes and goes again.
            v.update(&mut b.scope(&(20_000 + k)).unwrap(), k).unwrap();
            v.clear(&mut b.scope(&(20_000 + k)).unwrap()).unwrap();
        }
        let _snapshot = frozen(&mut b);
        let KeyedStateBackend::Heap(h) = &b else { unreachable!() };
        let mut merged_groups = 0;
        for group in &h.table::<u64>(0).groups {
            let map = group.map();
            let Some(since) = map.take_keys_since() else { continue };
            let mut merged = vec![7];
            let base = since.base_order().expect("recorded before the changes");
            let order = write_merging(map, &since, base, 0, &mut merged, &mut SortedEntries::default())
                .unwrap()
                .expect("merged");
            let mut sorted = SortedEntries::default();
            for (k, v) in map.iter() {
                sorted.push(0, |b| codec::encode_into(k, b), |b| codec::encode_into(v, b)).unwrap();
            }
            let mut want = vec![7];
            push_sorted_entries(&mut want, 0, &mut sorted, |_| ());
            assert_eq!(merged, want);
            assert!(write_in_key_order(map, &order, 0, &mut Vec::new(), &mut Vec::new()).unwrap());
            merged_groups += 1;
        }
        assert!(merged_groups > 100, "{merged_groups} key groups merged");
    }

    #[test]
    fn a_recorded_order_that_does_not_hold_is_not_written() {
        let (mut b, _, values) = counted_keys(3000);
        let snapshot = frozen(&mut b);
        let KeyedStateBackend::Heap(h) = &b else { unreachable!() };
        let groups = &h.table::<u64>(0).groups;
        // Three ways an order can fail: reversed, a bucket that holds nothing, one bucket short.
        let buckets = |g: usize| -> Vec<u32> {
            let mut b: Vec<(u32, u64)> = groups[g].map().buckets().map(|(b, k, _)| (b.unwrap(), *k)).collect();
            b.sort_by_key(|&(_, k)| codec::encode(&k).unwrap());
            b.into_iter().map(|(b, _)| b).collect()
        };
        let empty_bucket = |g: usize| (0u32..).find(|&b| groups[g].map().entry_at(b).is_none()).unwrap();
        for (g, group) in groups.iter().enumerate() {
            let mut order = buckets(g);
            match g % 3 {
                0 => order.reverse(),
                1 => order[0] = empty_bucket(g),
                _ => {
                    order.pop();
                }
            }
            let mut payload = vec![9];
            assert!(
                !write_in_key_order(group.map(), &order, 0, &mut payload, &mut Vec::new()).unwrap(),
                "key group {g}"
            );
            assert_eq!(payload, vec![9], "left as it was");
            group.map().set_key_order(order.into_boxed_slice());
            assert!(group.map().key_order().is_some());
        }
        assert_eq!(snapshot.write(Vec::new()).unwrap().0, written_afresh(&values));
    }

    #[test]
    fn batching_pays_while_the_keyed_state_fits_the_cpu_caches() {
        let mut b: KeyedStateBackend<u64> = heap(128, KeyGroupRange::inclusive(0, 127));
        let read = b.value_state(&ValueStateDescriptor::<u64>::new("read")).unwrap();
        let added = b.list_state(&ListStateDescriptor::<u64>::new("added")).unwrap();
        assert!(b.batching_pays(), "empty");
        for k in 0..30_000u64 {
            let mut s = b.scope(&k).unwrap();
            let n = read.value(&mut s).unwrap().unwrap_or(0);
            read.update(&mut s, n + 1).unwrap();
        }
        assert!(b.batching_pays(), "510 KB of values");
        // Only ever added to, never read: a write probes the table as a read does, so it counts.
        for k in 0..20_000u64 {
            added.add(&mut b.scope(&k).unwrap(), k).unwrap();
        }
        assert!(!b.batching_pays(), "about 1.2 MB with the lists (33 bytes each)");
    }

    #[test]
    fn misrouted_keys_are_reported() {
        let mut b: KeyedStateBackend<i32> = heap(128, KeyGroupRange::inclusive(0, 31));
        // Integer 0 belongs to key group 94.
        assert!(matches!(b.scope(&0).err(), Some(StateError::MisroutedKey { key_group: 94, .. })));
    }

    /// A handle's lookup checks its table's type without `dyn Any`: one of another backend,
    /// whose slot holds another type, must still be refused rather than read as its own type.
    #[test]
    #[should_panic(expected = "state handle used with another operator's keyed state")]
    fn a_handle_of_another_backend_is_refused() {
        let mut words: KeyedStateBackend<u64> = heap(128, KeyGroupRange::inclusive(0, 127));
        let mut counts: KeyedStateBackend<u64> = heap(128, KeyGroupRange::inclusive(0, 127));
        let word = words.value_state(&ValueStateDescriptor::<String>::new("word")).unwrap();
        let count = counts.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        word.update(&mut words.scope(&1).unwrap(), "one".to_string()).unwrap();
        count.update(&mut counts.scope(&1).unwrap(), 1).unwrap();
        let _ = count.value(&mut words.scope(&1).unwrap());
    }

    /// One step of a record's work on the current key.
    #[derive(Debug, Clone)]
    enum Step {
        Read(usize),
        Write(usize, u64),
        Clear(usize),
        Append(u64),
        Reduce(i64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..2usize).prop_map(Step::Read),
            (0..2usize, 0..100u64).prop_map(|(s, v)| Step::Write(s, v)),
            (0..2usize).prop_map(Step::Clear),
            (0..100u64).prop_map(Step::Append),
            (-5..5i64).prop_map(Step::Reduce),
        ]
    }

    /// What happens to the value state "v" between snapshots.
    #[derive(Debug, Clone)]
    enum Change {
        Write(u64, u64),
        Clear(u64),
        /// A snapshot taken and written at once.
        Snapshot,
        /// A snapshot taken now and written at the next `WriteHeld`, the task writing meanwhile.
        Hold,
        WriteHeld,
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (0..600u64, 0..1000u64).prop_map(|(k, v)| Change::Write(k, v)),
            1 => (0..600u64).prop_map(Change::Clear),
            2 => Just(Change::Snapshot),
            1 => Just(Change::Hold),
            1 => Just(Change::WriteHeld),
        ]
    }

    proptest::proptest! {
        /// Whatever comes between snapshots (new values, keys that come and go, snapshots held
        /// while the task writes), a snapshot writes the bytes a snapshot sorting afresh writes.
        #[test]
        fn snapshots_in_recorded_key_orders_write_what_sorting_afresh_writes(
            changes in proptest::collection::vec(change(), 1..400)
        ) {
            let mut b = heap::<u64>(128, KeyGroupRange::inclusive(0, 127));
            let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
            let mut values = BTreeMap::new();
            let mut held = None;
            for change in changes {
                match change {
                    Change::Write(k, value) => {
                        v.update(&mut b.scope(&k).unwrap(), value).unwrap();
                        values.insert(k, value);
                    }
                    Change::Clear(k) => {
                        v.clear(&mut b.scope(&k).unwrap()).unwrap();
                        values.remove(&k);
                    }
                    Change::Snapshot => {
                        proptest::prop_assert_eq!(frozen(&mut b).write(Vec::new()).unwrap().0, written_afresh(&values));
                    }
                    Change::Hold => held = Some((frozen(&mut b), values.clone())),
                    Change::WriteHeld => {
                        if let Some((snapshot, then)) = held.take() {
                            proptest::prop_assert_eq!(snapshot.write(Vec::new()).unwrap().0, written_afresh(&then));
                        }
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// Whatever records do to their states (reads, writes, clears, inserts that grow the
        /// tables, snapshots that freeze key groups in between), every read returns what a plain
        /// map holds, and a snapshot holds what the map held when it was taken.
        #[test]
        fn scopes_read_what_was_written(
            records in proptest::collection::vec((0..40u32, proptest::collection::vec(step(), 1..6), 0..8u8), 1..150)
        ) {
            let mut b: KeyedStateBackend<String> = heap(128, KeyGroupRange::inclusive(0, 127));
            let values = [
                b.value_state(&ValueStateDescriptor::<u64>::new("a")).unwrap(),
                b.value_state(&ValueStateDescriptor::<u64>::new("b")).unwrap(),
            ];
            let list = b.list_state(&ListStateDescriptor::<u64>::new("l")).unwrap();
            let sum = b.reducing_state(&ReducingStateDescriptor::new("r", |a: &i64, b: &i64| a + b)).unwrap();
            type Model = BTreeMap<(usize, String), Vec<i64>>;
            let mut model: Model = BTreeMap::new();
            let mut taken: Option<(HeapSnapshot, Model)> = None;
            for (key, steps, snapshot) in records {
                let key = format!("key-{key}");
                let mut s = b.scope(&key).unwrap();
                for step in steps {
                    match step {
                        Step::Read(i) => {
                            let expected = model.get(&(i, key.clone())).map(|v| v[0] as u64);
                            proptest::prop_assert_eq!(values[i].value(&mut s).unwrap(), expected);
                        }
                        Step::Write(i, v) => {
                            values[i].update(&mut s, v).unwrap();
                            model.insert((i, key.clone()), vec![v as i64]);
                        }
                        Step::Clear(i) => {
                            values[i].clear(&mut s).unwrap();
                            model.remove(&(i, key.clone()));
                        }
                        Step::Append(v) => {
                            list.add(&mut s, v).unwrap();
                            model.entry((2, key.clone())).or_default().push(v as i64);
                        }
                        Step::Reduce(v) => {
                            let total = sum.add(&mut s, v).unwrap();
                            let stored = model.entry((3, key.clone())).or_insert_with(|| vec![0]);
                            stored[0] += v;
                            proptest::prop_assert_eq!(total, stored[0]);
                        }
                    }
                }
                let expected_list: Vec<u64> =
                    model.get(&(2, key.clone())).map(|l| l.iter().map(|&v| v as u64).collect()).unwrap_or_default();
                proptest::prop_assert_eq!(list.get(&mut s).unwrap(), expected_list);
                match snapshot {
                    0 => taken = Some((frozen(&mut b), model.clone())),
                    1 => drop(frozen(&mut b)),
                    _ => {}
                }
            }
            if let Some((snap, at_snapshot)) = taken {
                let dir = tempfile::tempdir().unwrap();
                let file = write_frozen(&snap, dir.path(), "f");
                let mut r: KeyedStateBackend<String> = restored(128, KeyGroupRange::inclusive(0, 127), &[file]);
                let a = r.value_state(&ValueStateDescriptor::<u64>::new("a")).unwrap();
                for k in 0..40 {
                    let key = format!("key-{k}");
                    let expected = at_snapshot.get(&(0, key.clone())).map(|v| v[0] as u64);
                    proptest::prop_assert_eq!(a.value(&mut r.scope(&key).unwrap()).unwrap(), expected);
                }
            }
        }
    }
}
