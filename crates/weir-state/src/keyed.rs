//! The heap keyed state backend (`state.backend.type: hashmap`).
//!
//! State lives as typed values in one hash map per key group, so a record costs one map lookup and
//! no serialization. Each key group's map sits behind an `Arc`: a snapshot clones the `Arc`s (the
//! synchronous part of a checkpoint), and a write to a key group whose map the snapshot still
//! holds copies that one map first (`Arc::make_mut`). The asynchronous part then encodes the frozen
//! maps off the task thread.

use crate::codec;
use crate::error::StateError;
use crate::format::{push_entries, FileHeader, StateFileReader, StateFileWriter, StateKind, StateMeta};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::io::Write;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use weir_core::key_group::assign_to_key_group;
use weir_core::metadata::KeyedStateHandle;
use weir_core::{KeyGroupRange, KeyHash};

/// What a key must be: stably hashable into a key group ([`KeyHash`]), serializable for
/// snapshots, and usable in an in-memory hash map.
pub trait Key: KeyHash + Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + Debug + 'static {}
impl<T: KeyHash + Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + Debug + 'static> Key for T {}

/// What a state value must be.
pub trait StateData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> StateData for T {}

type ReduceFn<T> = Arc<dyn Fn(&T, &T) -> T + Send + Sync>;

macro_rules! descriptor {
    ($(#[$doc:meta])* $desc:ident, $handle:ident, [$($g:ident),+]) => {
        $(#[$doc])*
        pub struct $desc<$($g),+> {
            name: String,
            _types: PhantomData<fn() -> ($($g,)+)>,
        }

        impl<$($g),+> $desc<$($g),+> {
            pub fn new(name: impl Into<String>) -> Self {
                $desc { name: name.into(), _types: PhantomData }
            }
            pub fn name(&self) -> &str {
                &self.name
            }
        }

        /// Handle to a registered state; use it with the current key's [`KeyScope`].
        pub struct $handle<$($g),+> {
            slot: usize,
            _types: PhantomData<fn() -> ($($g,)+)>,
        }

        impl<$($g),+> Clone for $handle<$($g),+> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($g),+> Copy for $handle<$($g),+> {}
    };
}

descriptor!(
    /// Declares a keyed value state: one `T` per key.
    ValueStateDescriptor, ValueState, [T]
);
descriptor!(
    /// Declares a keyed list state: a list of `T` per key.
    ListStateDescriptor, ListState, [T]
);
descriptor!(
    /// Declares a keyed map state: a map `UK → UV` per key (ordered, so snapshots are deterministic).
    MapStateDescriptor, MapState, [UK, UV]
);

/// Declares a keyed reducing state: one `T` per key, combined with `reduce` on every `add`.
pub struct ReducingStateDescriptor<T> {
    name: String,
    reduce: ReduceFn<T>,
}

impl<T> ReducingStateDescriptor<T> {
    pub fn new(name: impl Into<String>, reduce: impl Fn(&T, &T) -> T + Send + Sync + 'static) -> Self {
        ReducingStateDescriptor { name: name.into(), reduce: Arc::new(reduce) }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

pub struct ReducingState<T> {
    slot: usize,
    _types: PhantomData<fn() -> T>,
}
impl<T> Clone for ReducingState<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ReducingState<T> {}

type Group<K, V> = Arc<FxHashMap<K, V>>;

/// Encoded `(key, value)` entries.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

struct Table<K, V> {
    meta: StateMeta,
    groups: Vec<Group<K, V>>,
    reduce: Option<ReduceFn<V>>,
}

/// A table of any value type, as the backend stores it.
trait AnyTable<K>: Send {
    fn meta(&self) -> &StateMeta;
    fn snapshot(&self) -> Box<dyn TableSnapshot>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
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
        buf: &mut EncodeBuffer,
    ) -> Result<(), StateError>;
}

/// Scratch space for encoding one key group: all keys and values back to back, and where each
/// entry's key and value lie (`key start`, `value start`, `value end`).
#[derive(Default)]
struct EncodeBuffer {
    bytes: Vec<u8>,
    /// `(first 8 key bytes as a big-endian number, key start, value start, value end)`: the
    /// prefix orders most entries without comparing byte slices.
    spans: Vec<(u64, usize, usize, usize)>,
}

impl EncodeBuffer {
    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// Appends one entry, its key and value written by the two functions.
    fn push<E>(
        &mut self,
        key: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
        value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let key_start = self.bytes.len();
        key(&mut self.bytes)?;
        let value_start = self.bytes.len();
        value(&mut self.bytes)?;
        let mut prefix = [0u8; 8];
        let key_bytes = &self.bytes[key_start..value_start];
        let n = key_bytes.len().min(8);
        prefix[..n].copy_from_slice(&key_bytes[..n]);
        self.spans.push((u64::from_be_bytes(prefix), key_start, value_start, self.bytes.len()));
        Ok(())
    }

    /// Sorts the entries by key bytes and appends them to `payload`.
    fn flush_sorted(&mut self, state_index: u16, payload: &mut Vec<u8>) {
        let bytes = &self.bytes;
        // Same order as comparing the key bytes: a zero-padded prefix sorts like the bytes it holds.
        self.spans.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| bytes[a.1..a.2].cmp(&bytes[b.1..b.2])));
        push_entries(payload, state_index, self.spans.iter().map(|&(_, k, v, e)| (&bytes[k..v], &bytes[v..e])));
    }
}

impl<K: Key, V: StateData> AnyTable<K> for Table<K, V> {
    fn meta(&self) -> &StateMeta {
        &self.meta
    }
    fn snapshot(&self) -> Box<dyn TableSnapshot> {
        Box::new(FrozenTable { meta: self.meta.clone(), groups: self.groups.clone() })
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct FrozenTable<K, V> {
    meta: StateMeta,
    groups: Vec<Group<K, V>>,
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
        buf: &mut EncodeBuffer,
    ) -> Result<(), StateError> {
        let enc_err = |detail| StateError::Encode { name: self.meta.name.clone(), detail };
        buf.clear();
        for (k, v) in self.groups[index].iter() {
            buf.push(|b| codec::encode_into(k, b), |b| codec::encode_into(v, b)).map_err(enc_err)?;
        }
        buf.flush_sorted(state_index, payload);
        Ok(())
    }
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
        buf: &mut EncodeBuffer,
    ) -> Result<(), StateError> {
        buf.clear();
        for (k, v) in &self.groups[index] {
            let copy = |bytes: &[u8], b: &mut Vec<u8>| -> Result<(), std::convert::Infallible> {
                b.extend_from_slice(bytes);
                Ok(())
            };
            let Ok(()) = buf.push(|b| copy(k, b), |b| copy(v, b));
        }
        buf.flush_sorted(state_index, payload);
        Ok(())
    }
}

/// Keyed state of one operator subtask: the key groups it owns, and its declared states.
pub struct HeapKeyedBackend<K> {
    max_parallelism: u32,
    key_groups: KeyGroupRange,
    tables: Vec<Box<dyn AnyTable<K>>>,
    by_name: HashMap<String, usize>,
    restored: BTreeMap<String, RawTable>,
}

impl<K: Key> HeapKeyedBackend<K> {
    pub fn new(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        HeapKeyedBackend {
            max_parallelism,
            key_groups,
            tables: Vec::new(),
            by_name: HashMap::new(),
            restored: BTreeMap::new(),
        }
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.key_groups
    }

    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// Reads the key groups this backend owns from restored state files. Call before declaring
    /// states. `handles` pair each handle with its file's resolved path.
    pub fn restore(&mut self, handles: &[(PathBuf, KeyedStateHandle)]) -> Result<(), StateError> {
        let n = self.key_groups.count as usize;
        let mut raw: BTreeMap<String, (StateKind, Vec<Entries>)> = BTreeMap::new();
        for (path, handle) in handles {
            let mut reader = StateFileReader::open(path)?;
            let states = reader.header().states.clone();
            for (i, kg) in handle.key_groups.iter().enumerate() {
                let Some(local) = self.key_groups.offset_of(kg) else {
                    continue;
                };
                for (state_index, entries) in reader.read_key_group(kg, handle.offsets[i])? {
                    let meta = states.get(state_index as usize).ok_or_else(|| StateError::CorruptFile {
                        path: path.clone(),
                        detail: format!("key group {kg} refers to undeclared state index {state_index}"),
                    })?;
                    let slot = raw.entry(meta.name.clone()).or_insert_with(|| (meta.kind, vec![Vec::new(); n]));
                    slot.1[local].extend(entries);
                }
            }
        }
        for (name, (kind, groups)) in raw {
            self.restored.insert(name.clone(), RawTable { meta: StateMeta { name, kind }, groups: Arc::new(groups) });
        }
        Ok(())
    }

    fn register<V: StateData>(
        &mut self,
        name: &str,
        kind: StateKind,
        reduce: Option<ReduceFn<V>>,
    ) -> Result<usize, StateError> {
        if let Some(&slot) = self.by_name.get(name) {
            let table = &self.tables[slot];
            if table.meta().kind != kind || table.as_any().downcast_ref::<Table<K, V>>().is_none() {
                return Err(StateError::DuplicateName { name: name.to_string() });
            }
            return Ok(slot);
        }
        let n = self.key_groups.count as usize;
        let mut groups: Vec<FxHashMap<K, V>> = (0..n).map(|_| FxHashMap::default()).collect();
        if let Some(raw) = self.restored.remove(name) {
            if raw.meta.kind != kind {
                let stored = raw.meta.kind.label();
                self.restored.insert(name.to_string(), raw);
                return Err(StateError::KindMismatch { name: name.to_string(), declared: kind.label(), stored });
            }
            for (local, entries) in raw.groups.iter().enumerate() {
                let kg = self.key_groups.start + local as u32;
                for (kb, vb) in entries {
                    let decode_err =
                        |what, detail| StateError::Decode { name: name.to_string(), key_group: kg, what, detail };
                    let key: K = codec::decode(kb).map_err(|d| decode_err("key", d))?;
                    let actual = assign_to_key_group(&key, self.max_parallelism);
                    if actual != kg {
                        return Err(StateError::KeyGroupMismatch { name: name.to_string(), stored: kg, actual });
                    }
                    let value: V = codec::decode(vb).map_err(|d| decode_err("value", d))?;
                    groups[local].insert(key, value);
                }
            }
        }
        let table = Table::<K, V> {
            meta: StateMeta { name: name.to_string(), kind },
            groups: groups.into_iter().map(Arc::new).collect(),
            reduce,
        };
        self.tables.push(Box::new(table));
        self.by_name.insert(name.to_string(), self.tables.len() - 1);
        Ok(self.tables.len() - 1)
    }

    pub fn value_state<T: StateData>(&mut self, d: &ValueStateDescriptor<T>) -> Result<ValueState<T>, StateError> {
        let slot = self.register::<T>(&d.name, StateKind::Value, None)?;
        Ok(ValueState { slot, _types: PhantomData })
    }

    pub fn list_state<T: StateData>(&mut self, d: &ListStateDescriptor<T>) -> Result<ListState<T>, StateError> {
        let slot = self.register::<Vec<T>>(&d.name, StateKind::List, None)?;
        Ok(ListState { slot, _types: PhantomData })
    }

    pub fn map_state<UK, UV>(&mut self, d: &MapStateDescriptor<UK, UV>) -> Result<MapState<UK, UV>, StateError>
    where
        UK: StateData + Ord,
        UV: StateData,
    {
        let slot = self.register::<BTreeMap<UK, UV>>(&d.name, StateKind::Map, None)?;
        Ok(MapState { slot, _types: PhantomData })
    }

    pub fn reducing_state<T: StateData>(
        &mut self,
        d: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>, StateError> {
        let slot = self.register::<T>(&d.name, StateKind::Reducing, Some(d.reduce.clone()))?;
        Ok(ReducingState { slot, _types: PhantomData })
    }

    /// Scopes state access to `key`. Fails when the key does not belong to this subtask, which
    /// would mean a routing bug.
    #[inline]
    pub fn scope<'a>(&'a mut self, key: &'a K) -> Result<KeyScope<'a, K>, MisroutedKey> {
        let kg = assign_to_key_group(key, self.max_parallelism);
        match self.key_groups.offset_of(kg) {
            Some(group) => Ok(KeyScope { backend: self, key, group }),
            None => Err(MisroutedKey { key_group: kg, owned: self.key_groups }),
        }
    }

    /// The synchronous part of a snapshot: freezes every key group (pointer copies).
    pub fn snapshot(&self) -> KeyedSnapshot {
        let mut tables: Vec<Box<dyn TableSnapshot>> = self.tables.iter().map(|t| t.snapshot()).collect();
        for raw in self.restored.values() {
            tables.push(Box::new(RawTable { meta: raw.meta.clone(), groups: raw.groups.clone() }));
        }
        tables.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        KeyedSnapshot { key_groups: self.key_groups, tables }
    }

    #[inline]
    fn table<V: 'static>(&self, slot: usize) -> &Table<K, V> {
        match self.tables[slot].as_any().downcast_ref() {
            Some(t) => t,
            None => panic!("state handle used with another operator's keyed state"),
        }
    }

    #[inline]
    fn table_mut<V: 'static>(&mut self, slot: usize) -> &mut Table<K, V> {
        match self.tables[slot].as_any_mut().downcast_mut() {
            Some(t) => t,
            None => panic!("state handle used with another operator's keyed state"),
        }
    }
}

#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("record with key group {key_group} reached a subtask owning key groups {owned}")]
pub struct MisroutedKey {
    pub key_group: u32,
    pub owned: KeyGroupRange,
}

/// Keyed state access for the current key.
pub struct KeyScope<'a, K> {
    backend: &'a mut HeapKeyedBackend<K>,
    key: &'a K,
    group: usize,
}

impl<K: Key> KeyScope<'_, K> {
    pub fn key(&self) -> &K {
        self.key
    }

    #[inline]
    fn get<V: StateData>(&self, slot: usize) -> Option<&V> {
        self.backend.table::<V>(slot).groups[self.group].get(self.key)
    }

    #[inline]
    fn entry<V: StateData>(&mut self, slot: usize, init: impl FnOnce() -> V) -> &mut V {
        let (key, group) = (self.key, self.group);
        let map = Arc::make_mut(&mut self.backend.table_mut::<V>(slot).groups[group]);
        if !map.contains_key(key) {
            map.insert(key.clone(), init());
        }
        match map.get_mut(key) {
            Some(v) => v,
            None => unreachable!("inserted above"),
        }
    }

    #[inline]
    fn put<V: StateData>(&mut self, slot: usize, value: V) {
        let (key, group) = (self.key, self.group);
        let map = Arc::make_mut(&mut self.backend.table_mut::<V>(slot).groups[group]);
        match map.get_mut(key) {
            Some(v) => *v = value,
            None => {
                map.insert(key.clone(), value);
            }
        }
    }

    fn remove<V: StateData>(&mut self, slot: usize) -> Option<V> {
        let (key, group) = (self.key, self.group);
        let table = self.backend.table_mut::<V>(slot);
        if !table.groups[group].contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut table.groups[group]).remove(key)
    }
}

impl<T: StateData> ValueState<T> {
    pub fn value<'s, K: Key>(&self, scope: &'s KeyScope<'_, K>) -> Option<&'s T> {
        scope.get::<T>(self.slot)
    }
    pub fn update<K: Key>(&self, scope: &mut KeyScope<'_, K>, value: T) {
        scope.put(self.slot, value)
    }
    /// The value for in-place change; copies the key group first if a snapshot still holds it.
    pub fn value_mut<'s, K: Key>(&self, scope: &'s mut KeyScope<'_, K>) -> Option<&'s mut T> {
        let (key, group) = (scope.key, scope.group);
        let map = &mut scope.backend.table_mut::<T>(self.slot).groups[group];
        if Arc::get_mut(map).is_none() && !map.contains_key(key) {
            return None; // shared with a snapshot and nothing to change: do not copy
        }
        Arc::make_mut(map).get_mut(key)
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) {
        scope.remove::<T>(self.slot);
    }
}

impl<T: StateData> ListState<T> {
    pub fn get<'s, K: Key>(&self, scope: &'s KeyScope<'_, K>) -> &'s [T] {
        scope.get::<Vec<T>>(self.slot).map(Vec::as_slice).unwrap_or(&[])
    }
    pub fn add<K: Key>(&self, scope: &mut KeyScope<'_, K>, value: T) {
        scope.entry::<Vec<T>>(self.slot, Vec::new).push(value)
    }
    pub fn update<K: Key>(&self, scope: &mut KeyScope<'_, K>, values: Vec<T>) {
        if values.is_empty() {
            self.clear(scope)
        } else {
            scope.put(self.slot, values)
        }
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) {
        scope.remove::<Vec<T>>(self.slot);
    }
}

impl<UK: StateData + Ord, UV: StateData> MapState<UK, UV> {
    pub fn get<'s, K: Key>(&self, scope: &'s KeyScope<'_, K>, user_key: &UK) -> Option<&'s UV> {
        scope.get::<BTreeMap<UK, UV>>(self.slot).and_then(|m| m.get(user_key))
    }
    pub fn contains<K: Key>(&self, scope: &KeyScope<'_, K>, user_key: &UK) -> bool {
        self.get(scope, user_key).is_some()
    }
    pub fn put<K: Key>(&self, scope: &mut KeyScope<'_, K>, user_key: UK, value: UV) {
        scope.entry::<BTreeMap<UK, UV>>(self.slot, BTreeMap::new).insert(user_key, value);
    }
    pub fn remove<K: Key>(&self, scope: &mut KeyScope<'_, K>, user_key: &UK) -> Option<UV> {
        scope.get::<BTreeMap<UK, UV>>(self.slot)?.get(user_key)?;
        let map = scope.entry::<BTreeMap<UK, UV>>(self.slot, BTreeMap::new);
        let removed = map.remove(user_key);
        if map.is_empty() {
            scope.remove::<BTreeMap<UK, UV>>(self.slot);
        }
        removed
    }
    pub fn entries<'s, K: Key>(&self, scope: &'s KeyScope<'_, K>) -> impl Iterator<Item = (&'s UK, &'s UV)> {
        scope.get::<BTreeMap<UK, UV>>(self.slot).into_iter().flat_map(|m| m.iter())
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) {
        scope.remove::<BTreeMap<UK, UV>>(self.slot);
    }
}

impl<T: StateData> ReducingState<T> {
    pub fn get<'s, K: Key>(&self, scope: &'s KeyScope<'_, K>) -> Option<&'s T> {
        scope.get::<T>(self.slot)
    }
    /// Combines `value` into the state with the descriptor's reduce function; returns the result.
    pub fn add<'s, K: Key>(&self, scope: &'s mut KeyScope<'_, K>, value: T) -> &'s T {
        let reduce = scope.backend.table::<T>(self.slot).reduce.clone();
        let mut value = Some(value);
        let slot = scope.entry::<T>(self.slot, || value.take().unwrap_or_else(|| unreachable!()));
        if let (Some(v), Some(reduce)) = (value, reduce) {
            *slot = reduce(slot, &v);
        }
        slot
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) {
        scope.remove::<T>(self.slot);
    }
}

/// A frozen snapshot of a keyed backend, written to a state file off the task thread.
pub struct KeyedSnapshot {
    key_groups: KeyGroupRange,
    tables: Vec<Box<dyn TableSnapshot>>,
}

impl KeyedSnapshot {
    /// True when no state holds any entry: such a snapshot writes no file.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| (0..self.key_groups.count as usize).all(|i| t.group_len(i) == 0))
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.key_groups
    }

    /// Writes the state file; returns the writer, the key-group offsets and the file size.
    pub fn write<W: Write>(&self, out: W) -> Result<(W, Vec<u64>, u64), StateError> {
        let header =
            FileHeader { key_groups: self.key_groups, states: self.tables.iter().map(|t| t.meta().clone()).collect() };
        let io = StateError::Write;
        let mut writer = StateFileWriter::new(out, &header).map_err(io)?;
        let (mut payload, mut buf) = (Vec::new(), EncodeBuffer::default());
        for local in 0..self.key_groups.count as usize {
            payload.clear();
            for (index, table) in self.tables.iter().enumerate() {
                table.write_group(local, index as u16, &mut payload, &mut buf)?;
            }
            writer.write_key_group(&payload).map_err(io)?;
        }
        writer.finish().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::key_group::key_group_range_for_subtask;

    fn write_snapshot<K: Key>(
        backend: &HeapKeyedBackend<K>,
        dir: &std::path::Path,
        name: &str,
    ) -> (PathBuf, KeyedStateHandle) {
        let path = dir.join(name);
        let snap = backend.snapshot();
        let (_, offsets, size) = snap.write(std::fs::File::create(&path).unwrap()).unwrap();
        let handle = KeyedStateHandle {
            file: weir_core::metadata::StateFileRef { path: name.into(), size },
            key_groups: snap.key_groups(),
            offsets,
        };
        (path, handle)
    }

    #[test]
    fn every_state_kind_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut b: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        let count = b.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        let seen = b.list_state(&ListStateDescriptor::<String>::new("seen")).unwrap();
        let attrs = b.map_state(&MapStateDescriptor::<String, i32>::new("attrs")).unwrap();
        let total = b.reducing_state(&ReducingStateDescriptor::new("total", |a: &i64, b: &i64| a + b)).unwrap();
        for (i, key) in ["a", "b", "a", "c"].iter().enumerate() {
            let key = key.to_string();
            let mut s = b.scope(&key).unwrap();
            let n = count.value(&s).copied().unwrap_or(0);
            count.update(&mut s, n + 1);
            seen.add(&mut s, format!("r{i}"));
            attrs.put(&mut s, "i".into(), i as i32);
            total.add(&mut s, 10);
        }
        let (path, handle) = write_snapshot(&b, dir.path(), "f");

        let mut r: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        r.restore(&[(path, handle)]).unwrap();
        let count = r.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        let seen = r.list_state(&ListStateDescriptor::<String>::new("seen")).unwrap();
        let attrs = r.map_state(&MapStateDescriptor::<String, i32>::new("attrs")).unwrap();
        let total = r.reducing_state(&ReducingStateDescriptor::new("total", |a: &i64, b: &i64| a + b)).unwrap();
        let a = "a".to_string();
        let s = r.scope(&a).unwrap();
        assert_eq!(count.value(&s), Some(&2));
        assert_eq!(seen.get(&s), &["r0".to_string(), "r2".to_string()]);
        assert_eq!(attrs.get(&s, &"i".to_string()), Some(&2));
        assert_eq!(total.get(&s), Some(&20));
    }

    #[test]
    fn snapshot_is_isolated_from_later_writes() {
        let mut b: HeapKeyedBackend<u64> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..1000u64 {
            v.update(&mut b.scope(&k).unwrap(), 1);
        }
        let snap = b.snapshot();
        for k in 0..1000u64 {
            v.update(&mut b.scope(&k).unwrap(), 2);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let (_, offsets, size) = snap.write(std::fs::File::create(&path).unwrap()).unwrap();
        let handle = KeyedStateHandle {
            file: weir_core::metadata::StateFileRef { path: "f".into(), size },
            key_groups: snap.key_groups(),
            offsets,
        };
        let mut r: HeapKeyedBackend<u64> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        r.restore(&[(path, handle)]).unwrap();
        let v = r.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..1000u64 {
            assert_eq!(v.value(&r.scope(&k).unwrap()), Some(&1), "key {k}");
        }
    }

    #[test]
    fn rescale_restores_each_key_on_exactly_one_subtask() {
        let dir = tempfile::tempdir().unwrap();
        let max_p = 13;
        let mut files = vec![];
        for i in 0..3 {
            let range = key_group_range_for_subtask(max_p, 3, i);
            let mut b: HeapKeyedBackend<u64> = HeapKeyedBackend::new(max_p, range);
            let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
            for k in 0..500u64 {
                if let Ok(mut s) = b.scope(&k) {
                    v.update(&mut s, k * 10);
                }
            }
            files.push(write_snapshot(&b, dir.path(), &format!("f{i}")));
        }
        let mut found = vec![0; 500];
        for j in 0..2 {
            let range = key_group_range_for_subtask(max_p, 2, j);
            let handles: Vec<_> =
                files.iter().filter_map(|(p, h)| h.intersection(&range).map(|h| (p.clone(), h))).collect();
            let mut b: HeapKeyedBackend<u64> = HeapKeyedBackend::new(max_p, range);
            b.restore(&handles).unwrap();
            let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
            for k in 0..500u64 {
                if let Ok(s) = b.scope(&k) {
                    assert_eq!(v.value(&s), Some(&(k * 10)));
                    found[k as usize] += 1;
                }
            }
        }
        assert!(found.iter().all(|&n| n == 1));
    }

    #[test]
    fn incompatible_types_and_kinds_are_refused_with_the_state_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut b: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<String>::new("name")).unwrap();
        let k = "k".to_string();
        v.update(&mut b.scope(&k).unwrap(), "text".into());
        let file = write_snapshot(&b, dir.path(), "f");

        let mut r: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        r.restore(std::slice::from_ref(&file)).unwrap();
        let err = r.value_state(&ValueStateDescriptor::<u64>::new("name")).err().unwrap().to_string();
        assert!(err.contains("'name'") && err.contains("value type"), "{err}");

        let mut r: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        r.restore(&[file]).unwrap();
        let err = r.list_state(&ListStateDescriptor::<String>::new("name")).err().unwrap().to_string();
        assert!(err.contains("declared as list state but the restored state is value state"), "{err}");
    }

    #[test]
    fn undeclared_restored_state_is_carried_into_the_next_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut b: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        let v = b.value_state(&ValueStateDescriptor::<u64>::new("kept")).unwrap();
        let k = "k".to_string();
        v.update(&mut b.scope(&k).unwrap(), 5);
        let file = write_snapshot(&b, dir.path(), "f1");
        let mut mid: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        mid.restore(&[file]).unwrap();
        let file = write_snapshot(&mid, dir.path(), "f2");
        let mut last: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
        last.restore(&[file]).unwrap();
        let v = last.value_state(&ValueStateDescriptor::<u64>::new("kept")).unwrap();
        assert_eq!(v.value(&last.scope(&k).unwrap()), Some(&5));
    }

    #[test]
    fn the_same_state_always_writes_the_same_bytes() {
        let write = |keys: Vec<String>| {
            let mut b: HeapKeyedBackend<String> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127));
            let v = b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
            for k in keys {
                let n = k.len() as u64;
                v.update(&mut b.scope(&k).unwrap(), n);
            }
            b.snapshot().write(Vec::new()).unwrap().0
        };
        // Keys sharing 8-byte prefixes, of different lengths, inserted in opposite orders.
        let keys: Vec<String> =
            (0..2000).map(|i| format!("common-prefix-{}", "x".repeat(i % 13)) + &i.to_string()).collect();
        let mut reversed = keys.clone();
        reversed.reverse();
        assert_eq!(write(keys), write(reversed));
    }

    #[test]
    fn misrouted_keys_are_reported() {
        let mut b: HeapKeyedBackend<i32> = HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 31));
        // Integer 0 belongs to key group 94.
        assert_eq!(b.scope(&0).err().unwrap().key_group, 94);
    }
}
