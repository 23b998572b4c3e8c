//! Keyed state over a byte-oriented key-value store (the `rocksdb` backend implements
//! [`KvStore`]): the typed layer, the row layout, and conversion to and from the canonical
//! key-group file, so a canonical savepoint means the same on every backend.
//!
//! Row layout (documented in `docs/formats.md`), one column family per state:
//!
//! ```text
//! row key   = key group (u16, big-endian) ++ key (MessagePack) [++ user key (MessagePack), map state]
//! row value = value / reducing: MessagePack of the value
//!             list: MessagePack of each element, back to back (so an append is a merge, no read)
//!             map: MessagePack of the user value
//! ```
//!
//! The key-group prefix makes a key-group range a contiguous key range (restores clip and
//! snapshots scan by range). MessagePack values are self-delimiting, so no key is a prefix of
//! another key's rows.

use crate::backend::StoreContext;
use crate::codec;
use crate::descriptors::{Key, ReduceFn, StateData};
use crate::error::StateError;
use crate::format::{read_key_groups, EntryAppender, FileHeader, StateFileWriter, StateKind, StateMeta};
use crate::snapshot::{RestoredKeyedState, SnapshotRequest, StoreSnapshot};
use crate::sorted_entries::SortedEntries;
use crate::timers::TimerQueues;
use std::any::Any;
use std::io::Write;
use std::marker::PhantomData;
use weir_core::key_group::assign_to_key_group;
use weir_core::timers::Timer;
use weir_core::{CheckpointId, KeyGroupRange};

/// Receives a row: (key, value).
pub type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateError> + 'a;
/// Receives a row of a state: (state, key, value).
pub type StateRowSink<'a> = dyn FnMut(&StateMeta, &[u8], &[u8]) -> Result<(), StateError> + 'a;

/// Bytes of the key-group prefix of every row key.
pub const KEY_GROUP_PREFIX_LEN: usize = 2;

pub fn key_group_prefix(key_group: u32) -> [u8; KEY_GROUP_PREFIX_LEN] {
    (key_group as u16).to_be_bytes()
}

/// One write of a batch: a put (`Some`) or a delete (`None`) of a row of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowWrite<'a> {
    pub state: usize,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// A byte-oriented store of keyed state, one table (column family) per declared state.
pub trait KvStore: Send {
    /// Declares a state; returns its index. Fails when a restored state of that name has
    /// another kind.
    fn declare(&mut self, meta: &StateMeta) -> Result<usize, StateError>;
    /// Reads a row's value into `out` (replacing its content, reusing its allocation); false when
    /// the row does not exist.
    fn get(&mut self, state: usize, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError>;
    fn put(&mut self, state: usize, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    /// Appends `operand` to the row's value (list state).
    fn append(&mut self, state: usize, key: &[u8], operand: &[u8]) -> Result<(), StateError>;
    fn delete(&mut self, state: usize, key: &[u8]) -> Result<(), StateError>;
    /// Reads several rows of `state` at once, calling `found` with each key's index in `keys`
    /// and its value (`None`: no such row). A store with a batched lookup (RocksDB's `MultiGet`
    /// sorts the keys and walks each file once for all of them) overrides it.
    fn get_many(
        &mut self,
        state: usize,
        keys: &[&[u8]],
        found: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StateError> {
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let present = self.get(state, key, &mut out)?;
            found(i, present.then_some(out.as_slice()));
        }
        Ok(())
    }
    /// A hint: `keys` of `state` are about to be read, one record after another. A store with a
    /// cache in front loads the missing ones with one [`KvStore::get_many`]; the default does
    /// nothing. Never changes what a read returns.
    fn prefetch(&mut self, _state: usize, _keys: &[&[u8]]) -> Result<(), StateError> {
        Ok(())
    }
    /// Whether [`KvStore::prefetch`] is worth the keyed operator's batching now: true while reads
    /// miss a cache often.
    fn prefetch_worthwhile(&self) -> bool {
        false
    }
    /// Writes `rows` as one batch. The write-back cache hands them over sorted by state and key,
    /// which an ordered store inserts more cheaply than the same rows one call at a time.
    fn write_rows(&mut self, rows: &[RowWrite<'_>]) -> Result<(), StateError> {
        write_each_row(self, rows)
    }
    /// Calls `f` with each row whose key starts with `prefix`, in key order, until it returns
    /// false.
    fn scan_prefix(
        &mut self,
        state: usize,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError>;
    fn delete_prefix(&mut self, state: usize, prefix: &[u8]) -> Result<(), StateError>;
    /// The synchronous part of a snapshot.
    fn snapshot(&mut self, request: &SnapshotRequest) -> Result<Box<dyn StoreSnapshot>, StateError>;
    /// Checkpoint `id` completed: its files may be referenced by later incremental checkpoints.
    fn checkpoint_complete(&mut self, id: CheckpointId);
}

/// Writes `rows` one put or delete at a time: [`KvStore::write_rows`] of a store without batches.
pub fn write_each_row<S: KvStore + ?Sized>(store: &mut S, rows: &[RowWrite<'_>]) -> Result<(), StateError> {
    for row in rows {
        match row.value {
            Some(value) => store.put(row.state, row.key, value)?,
            None => store.delete(row.state, row.key)?,
        }
    }
    Ok(())
}

/// Creates a store for one operator subtask, restoring its state.
pub trait StoreFactory: Send + Sync + std::fmt::Debug {
    /// The `state.backend.type` value.
    fn name(&self) -> &'static str;
    fn create(&self, ctx: &StoreContext, restored: &RestoredKeyedState) -> Result<Box<dyn KvStore>, StateError>;
}

struct Declared {
    meta: StateMeta,
    reduce: Option<Box<dyn Any + Send>>,
}

/// Typed keyed state over a [`KvStore`].
pub struct SerializedKeyedBackend<K> {
    store: Box<dyn KvStore>,
    max_parallelism: u32,
    key_groups: KeyGroupRange,
    declared: Vec<Declared>,
    /// Row key prefix of the current key: key group ++ key.
    key_buf: Vec<u8>,
    scratch: Vec<u8>,
    value_buf: Vec<u8>,
    /// The last row read: values are decoded from here, so a read allocates nothing.
    read_buf: Vec<u8>,
    /// Timer queues, in memory for firing order; each timer is also a row of its queue's table.
    pub(crate) timers: TimerQueues,
    /// States (bit per index, the first 64) read by the current key's row: what a prefetch loads.
    read_by_key: u64,
    /// Row keys of a prefetch, back to back, and where each ends.
    prefetch_rows: Vec<u8>,
    prefetch_ends: Vec<usize>,
    _key: PhantomData<fn(K)>,
}

impl<K: Key> SerializedKeyedBackend<K> {
    pub fn new(store: Box<dyn KvStore>, max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        SerializedKeyedBackend {
            store,
            max_parallelism,
            key_groups,
            declared: Vec::new(),
            key_buf: Vec::new(),
            scratch: Vec::new(),
            value_buf: Vec::new(),
            read_buf: Vec::new(),
            timers: TimerQueues::new(key_groups),
            read_by_key: 0,
            prefetch_rows: Vec::new(),
            prefetch_ends: Vec::new(),
            _key: PhantomData,
        }
    }

    /// Declares a state holding `V` per key (for a list, `V` is the element; for a map, the user
    /// value). The first restored row is decoded right away, so a snapshot whose types no longer
    /// match fails the restore instead of the first record that touches it.
    pub(crate) fn declare<V: StateData>(
        &mut self,
        meta: StateMeta,
        reduce: Option<ReduceFn<V>>,
    ) -> Result<usize, StateError> {
        let name = meta.name.clone();
        if let Some(i) = self.declared.iter().position(|d| d.meta.name == name) {
            if self.declared[i].meta != meta {
                return Err(StateError::DuplicateName { name });
            }
            return Ok(i);
        }
        let index = self.store.declare(&meta)?;
        if index != self.declared.len() {
            return Err(StateError::Backend(format!("store returned index {index} for state '{name}'")));
        }
        self.declared.push(Declared { meta, reduce: reduce.map(|r| Box::new(r) as Box<dyn Any + Send>) });
        self.check_first_row::<V>(index)?;
        Ok(index)
    }

    fn check_first_row<V: StateData>(&mut self, state: usize) -> Result<(), StateError> {
        let mut first: Option<(Vec<u8>, Vec<u8>)> = None;
        self.store.scan_prefix(state, &[], &mut |k, v| {
            first = Some((k.to_vec(), v.to_vec()));
            false
        })?;
        let Some((row_key, value)) = first else {
            return Ok(());
        };
        let meta = &self.declared[state].meta;
        let stored_kg = row_key.get(..KEY_GROUP_PREFIX_LEN).map(|p| u16::from_be_bytes([p[0], p[1]]) as u32);
        let key_bytes = &row_key[KEY_GROUP_PREFIX_LEN.min(row_key.len())..];
        let err = |what, detail| StateError::Decode {
            name: meta.name.clone(),
            key_group: stored_kg.unwrap_or(0),
            what,
            detail,
        };
        let key_len = codec::value_len(key_bytes).map_err(|d| err("key", d))?;
        let key: K = codec::decode(&key_bytes[..key_len]).map_err(|d| err("key", d))?;
        let actual = assign_to_key_group(&key, self.max_parallelism);
        if Some(actual) != stored_kg {
            return Err(StateError::KeyGroupMismatch {
                name: meta.name.clone(),
                stored: stored_kg.unwrap_or(0),
                actual,
            });
        }
        match meta.kind {
            StateKind::Value | StateKind::Reducing => {
                codec::decode::<V>(&value).map_err(|d| err("value", d))?;
            }
            StateKind::List => {
                if let Some(first) = codec::split_values(&value).next() {
                    codec::decode::<V>(first.map_err(|d| err("value", d))?).map_err(|d| err("value", d))?;
                }
            }
            StateKind::Map => {
                codec::decode::<V>(&value).map_err(|d| err("value", d))?;
            }
            StateKind::Timers => {}
        }
        Ok(())
    }

    /// Declares a timer queue in its own table; returns its index. Restored timers are read from
    /// the table into memory, each checked to belong to its key group.
    pub(crate) fn declare_timers(&mut self, name: &str) -> Result<usize, StateError> {
        if let Some(q) = self.timers.find(name) {
            return Ok(q);
        }
        let meta = StateMeta::new(name, StateKind::Timers);
        let table = self.store.declare(&meta)?;
        if table != self.declared.len() {
            return Err(StateError::Backend(format!("store returned index {table} for state '{name}'")));
        }
        self.declared.push(Declared { meta, reduce: None });
        let mut restored = Vec::new();
        self.store.scan_prefix(table, &[], &mut |row, _| {
            if let Some(prefix) = row.get(..KEY_GROUP_PREFIX_LEN) {
                restored
                    .push((u16::from_be_bytes([prefix[0], prefix[1]]) as u32, row[KEY_GROUP_PREFIX_LEN..].to_vec()));
            }
            true
        })?;
        self.timers.add::<K>(name, table, restored, self.max_parallelism)
    }

    /// Removes the earliest timer of `queue` if due at `time`, row included.
    pub(crate) fn pop_due_timer(&mut self, queue: usize, time: i64) -> Result<Option<(u32, Timer)>, StateError> {
        let Some((kg, timer)) = self.timers.pop_due(queue, time) else {
            return Ok(None);
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(&key_group_prefix(kg));
        self.scratch.extend_from_slice(&weir_core::timers::encode(&timer));
        self.store.delete(self.timers.queues[queue].table, &self.scratch)?;
        Ok(Some((kg, timer)))
    }

    /// Where `key`'s rows are: its key group.
    #[inline]
    pub(crate) fn locate(&self, key: &K) -> crate::backend::KeyLocation {
        crate::backend::KeyLocation::new(assign_to_key_group(key, self.max_parallelism), 0)
    }

    pub(crate) fn scope_at<'a>(&'a mut self, key: &'a K, kg: u32) -> Result<SerializedScope<'a, K>, StateError> {
        if self.key_groups.offset_of(kg).is_none() {
            return Err(StateError::MisroutedKey { key_group: kg, owned: self.key_groups });
        }
        self.key_buf.clear();
        push_key_row(kg, key, &mut self.key_buf)?;
        Ok(SerializedScope { backend: self, key, key_group: kg })
    }

    /// Whether holding records back to [`Self::prefetch`] their rows pays now: some state is
    /// read by key and the store's reads miss its cache often.
    pub(crate) fn prefetch_worthwhile(&self) -> bool {
        self.read_by_key != 0 && self.store.prefetch_worthwhile()
    }

    /// Loads the rows of `keys` (the next records' keys, in order) of every state read by key so
    /// far, so the records that follow find them in the store's cache. Keys this subtask does not
    /// own are skipped: their record fails on its own.
    pub(crate) fn prefetch(&mut self, keys: &[K]) -> Result<(), StateError> {
        self.prefetch_rows.clear();
        self.prefetch_ends.clear();
        for key in keys {
            let kg = assign_to_key_group(key, self.max_parallelism);
            if self.key_groups.offset_of(kg).is_none() {
                continue;
            }
            push_key_row(kg, key, &mut self.prefetch_rows)?;
            self.prefetch_ends.push(self.prefetch_rows.len());
        }
        let mut start = 0;
        let rows: Vec<&[u8]> = self
            .prefetch_ends
            .iter()
            .map(|&end| {
                let row = &self.prefetch_rows[start..end];
                start = end;
                row
            })
            .collect();
        let mut states = self.read_by_key;
        while states != 0 {
            let state = states.trailing_zeros() as usize;
            states &= states - 1;
            self.store.prefetch(state, &rows)?;
        }
        Ok(())
    }

    pub fn snapshot(&mut self, request: &SnapshotRequest) -> Result<Box<dyn StoreSnapshot>, StateError> {
        self.store.snapshot(request)
    }

    pub fn checkpoint_complete(&mut self, id: CheckpointId) {
        self.store.checkpoint_complete(id)
    }
}

/// Appends the row key prefix of `key` (in key group `kg`): key group ++ encoded key.
#[inline]
fn push_key_row<K: Key>(kg: u32, key: &K, out: &mut Vec<u8>) -> Result<(), StateError> {
    out.extend_from_slice(&key_group_prefix(kg));
    codec::encode_into(key, out).map_err(|detail| StateError::Encode { name: "<key>".into(), detail })
}

/// Serialized state access for the current key.
pub(crate) struct SerializedScope<'a, K> {
    backend: &'a mut SerializedKeyedBackend<K>,
    key: &'a K,
    key_group: u32,
}

impl<K: Key> SerializedScope<'_, K> {
    pub(crate) fn key(&self) -> &K {
        self.key
    }

    /// Registers (`add`) or deletes a timer of the current key, in memory and as a row.
    pub(crate) fn change_timer(
        &mut self,
        queue: usize,
        timestamp: i64,
        namespace: &[u8],
        add: bool,
    ) -> Result<(), StateError> {
        let b = &mut *self.backend;
        let timer = crate::timers::timer_bytes(timestamp, &b.key_buf[KEY_GROUP_PREFIX_LEN..], namespace);
        b.scratch.clear();
        b.scratch.extend_from_slice(&key_group_prefix(self.key_group));
        b.scratch.extend_from_slice(&timer);
        let table = b.timers.queues[queue].table;
        if add {
            if b.timers.register(queue, self.key_group, timer) {
                b.store.put(table, &b.scratch, &[])?;
            }
        } else if b.timers.delete(queue, self.key_group, &timer) {
            b.store.delete(table, &b.scratch)?;
        }
        Ok(())
    }

    fn name(&self, state: usize) -> String {
        self.backend.declared.get(state).map(|d| d.meta.name.clone()).unwrap_or_default()
    }

    fn decode<T: StateData>(&self, state: usize, what: &'static str, bytes: &[u8]) -> Result<T, StateError> {
        codec::decode(bytes).map_err(|detail| StateError::Decode {
            name: self.name(state),
            key_group: self.key_group,
            what,
            detail,
        })
    }

    fn encode_value<T: StateData>(&mut self, state: usize, value: &T) -> Result<(), StateError> {
        self.backend.value_buf.clear();
        codec::encode_into(value, &mut self.backend.value_buf)
            .map_err(|detail| StateError::Encode { name: self.name(state), detail })
    }

    /// `scratch` = current key prefix ++ user key.
    fn compose_user_key<UK: StateData>(&mut self, state: usize, user_key: &UK) -> Result<(), StateError> {
        let b = &mut *self.backend;
        b.scratch.clear();
        b.scratch.extend_from_slice(&b.key_buf);
        codec::encode_into(user_key, &mut b.scratch)
            .map_err(|detail| StateError::Encode { name: self.name(state), detail })
    }

    /// Reads the current key's row (or, with `user_key_row`, the row composed in `scratch`) into
    /// `read_buf`.
    fn read(&mut self, state: usize, user_key_row: bool) -> Result<bool, StateError> {
        let b = &mut *self.backend;
        let key = if user_key_row {
            &b.scratch
        } else {
            if state < 64 {
                b.read_by_key |= 1 << state;
            }
            &b.key_buf
        };
        b.store.get(state, key, &mut b.read_buf)
    }

    pub(crate) fn get<T: StateData>(&mut self, state: usize) -> Result<Option<T>, StateError> {
        if !self.read(state, false)? {
            return Ok(None);
        }
        self.decode(state, "value", &self.backend.read_buf).map(Some)
    }

    pub(crate) fn put<T: StateData>(&mut self, state: usize, value: &T) -> Result<(), StateError> {
        self.encode_value(state, value)?;
        let b = &mut *self.backend;
        b.store.put(state, &b.key_buf, &b.value_buf)
    }

    pub(crate) fn delete(&mut self, state: usize) -> Result<(), StateError> {
        let b = &mut *self.backend;
        b.store.delete(state, &b.key_buf)
    }

    pub(crate) fn list_get<T: StateData>(&mut self, state: usize) -> Result<Vec<T>, StateError> {
        if !self.read(state, false)? {
            return Ok(Vec::new());
        }
        codec::split_values(&self.backend.read_buf)
            .map(|v| {
                let v = v.map_err(|detail| StateError::Decode {
                    name: self.name(state),
                    key_group: self.key_group,
                    what: "value",
                    detail,
                })?;
                self.decode(state, "value", v)
            })
            .collect()
    }

    pub(crate) fn list_add<T: StateData>(&mut self, state: usize, value: &T) -> Result<(), StateError> {
        self.encode_value(state, value)?;
        let b = &mut *self.backend;
        b.store.append(state, &b.key_buf, &b.value_buf)
    }

    pub(crate) fn list_update<T: StateData>(&mut self, state: usize, values: &[T]) -> Result<(), StateError> {
        self.backend.value_buf.clear();
        for v in values {
            codec::encode_into(v, &mut self.backend.value_buf)
                .map_err(|detail| StateError::Encode { name: self.name(state), detail })?;
        }
        let b = &mut *self.backend;
        b.store.put(state, &b.key_buf, &b.value_buf)
    }

    pub(crate) fn map_get<UK: StateData, UV: StateData>(
        &mut self,
        state: usize,
        user_key: &UK,
    ) -> Result<Option<UV>, StateError> {
        self.compose_user_key(state, user_key)?;
        if !self.read(state, true)? {
            return Ok(None);
        }
        self.decode(state, "value", &self.backend.read_buf).map(Some)
    }

    pub(crate) fn map_put<UK: StateData, UV: StateData>(
        &mut self,
        state: usize,
        user_key: &UK,
        value: &UV,
    ) -> Result<(), StateError> {
        self.compose_user_key(state, user_key)?;
        self.encode_value(state, value)?;
        let b = &mut *self.backend;
        b.store.put(state, &b.scratch, &b.value_buf)
    }

    pub(crate) fn map_remove<UK: StateData>(&mut self, state: usize, user_key: &UK) -> Result<(), StateError> {
        self.compose_user_key(state, user_key)?;
        let b = &mut *self.backend;
        b.store.delete(state, &b.scratch)
    }

    pub(crate) fn map_entries<UK: StateData, UV: StateData>(
        &mut self,
        state: usize,
    ) -> Result<Vec<(UK, UV)>, StateError> {
        let b = &mut *self.backend;
        let prefix_len = b.key_buf.len();
        let mut raw = Vec::new();
        b.store.scan_prefix(state, &b.key_buf, &mut |k, v| {
            raw.push((k[prefix_len..].to_vec(), v.to_vec()));
            true
        })?;
        raw.iter().map(|(k, v)| Ok((self.decode(state, "key", k)?, self.decode(state, "value", v)?))).collect()
    }

    pub(crate) fn map_clear(&mut self, state: usize) -> Result<(), StateError> {
        let b = &mut *self.backend;
        b.store.delete_prefix(state, &b.key_buf)
    }

    pub(crate) fn reducing_add<T: StateData>(&mut self, state: usize, value: T) -> Result<T, StateError> {
        let reduce =
            self.backend.declared[state].reduce.as_ref().and_then(|r| r.downcast_ref::<ReduceFn<T>>()).cloned();
        let result = match (self.get::<T>(state)?, reduce) {
            (Some(old), Some(reduce)) => reduce(&old, &value),
            _ => value,
        };
        self.put(state, &result)?;
        Ok(result)
    }
}

// ---- canonical conversion ----------------------------------------------------------------------

/// Turns one canonical entry (key bytes, value bytes in the heap's encoding) into rows, each given
/// to `row` as (row key suffix after the key group prefix, value).
pub fn canonical_to_rows(
    kind: StateKind,
    key: &[u8],
    value: &[u8],
    row: &mut RowSink<'_>,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    match kind {
        StateKind::Value | StateKind::Reducing | StateKind::Timers => row(key, value).map_err(|e| e.to_string()),
        StateKind::List => {
            let (_, elements) = codec::read_array_header(value)?;
            if elements.is_empty() {
                return Ok(());
            }
            row(key, elements).map_err(|e| e.to_string())
        }
        StateKind::Map => {
            let (n, mut rest) = codec::read_map_header(value)?;
            for _ in 0..n {
                let uk_len = codec::value_len(rest)?;
                let (uk, after) = rest.split_at(uk_len);
                let uv_len = codec::value_len(after)?;
                let (uv, after) = after.split_at(uv_len);
                rest = after;
                scratch.clear();
                scratch.extend_from_slice(key);
                scratch.extend_from_slice(uk);
                row(scratch, uv).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

/// Reads the key groups `range` of canonical state files and hands each row to `row` as
/// (state, row key with key-group prefix, value), each state's rows in ascending key order (what
/// a store's bulk loader needs): files are read by key group, and the rows of a key group are
/// sorted when their canonical order is not the bytes' (map entries are ordered by user key value).
pub fn read_canonical_rows(
    restored: &RestoredKeyedState,
    range: KeyGroupRange,
    row: &mut StateRowSink<'_>,
) -> Result<(), StateError> {
    let mut files = restored.files.clone();
    files.sort_by_key(|(_, handle)| handle.key_groups.start);
    let mut rows = SortedEntries::default();
    let mut scratch = Vec::new();
    read_key_groups(&files, range, &restored.checked, &mut |path, meta, kg, state| {
        rows.clear();
        let prefix = key_group_prefix(kg);
        for (k, v) in state.entries() {
            let mut emit = |suffix: &[u8], value: &[u8]| {
                rows.push_bytes(&[&prefix, suffix], value)
                    .map_err(|e| StateError::Encode { name: meta.name.clone(), detail: format!("key group {kg}: {e}") })
            };
            canonical_to_rows(meta.kind, k, v, &mut emit, &mut scratch).map_err(|detail| StateError::CorruptFile {
                path: path.to_path_buf(),
                detail: format!("state '{}': {detail}", meta.name),
            })?;
        }
        rows.sorted().try_for_each(|(key, value)| row(meta, key, value))
    })
}

/// Rows of one key group of one state, in key order: (row key without the key-group prefix, value).
/// Shared by the threads that encode key groups in parallel.
pub trait RowSource: Sync {
    fn scan_key_group(&self, state: usize, key_group: u32, f: &mut RowSink<'_>) -> Result<(), StateError>;
}

/// Writes rows as a canonical key-group file, in the format the heap backend writes, so either
/// backend restores it. `states` must be sorted by name, as the heap backend orders them. Key
/// groups are encoded on several threads (see [`StateFileWriter::write_key_groups`]).
pub fn write_canonical<W: Write>(
    out: W,
    key_groups: KeyGroupRange,
    states: &[StateMeta],
    rows: &dyn RowSource,
) -> Result<(W, crate::format::WrittenFile), StateError> {
    let header = FileHeader { key_groups, states: states.to_vec() };
    let mut writer = StateFileWriter::new(out, &header).map_err(StateError::Write)?;
    writer.write_key_groups(key_groups.count as usize, true, &|| {
        let mut map = MapBuffer::default();
        move |local, payload: &mut Vec<u8>| {
            let kg = key_groups.start + local as u32;
            for (index, meta) in states.iter().enumerate() {
                let mut out = EntryAppender::start(payload, index as u16);
                append_canonical_entries(rows, index, meta, kg, &mut out, &mut map)?;
                out.finish();
            }
            Ok(())
        }
    })?;
    writer.finish().map_err(StateError::Write)
}

/// Appends the canonical entries of one state's key group, from its rows in key order: a row is
/// an entry, except a list's elements gain their array header and a map's rows (one per user key)
/// are gathered into one entry per key.
fn append_canonical_entries(
    rows: &dyn RowSource,
    index: usize,
    meta: &StateMeta,
    kg: u32,
    out: &mut EntryAppender<'_>,
    map: &mut MapBuffer,
) -> Result<(), StateError> {
    map.clear();
    let mut bad = None;
    rows.scan_key_group(index, kg, &mut |row_key, value| {
        match meta.kind {
            StateKind::Value | StateKind::Reducing | StateKind::Timers => out.push(row_key, value),
            StateKind::List => out.push_with(row_key, |v| {
                codec::write_array_header(codec::split_values(value).count(), v);
                v.extend_from_slice(value);
            }),
            StateKind::Map => match codec::value_len(row_key) {
                Ok(key_len) => {
                    let (key, user_key) = row_key.split_at(key_len);
                    if map.key.as_slice() != key {
                        map.flush_into(out);
                        map.key.extend_from_slice(key);
                    }
                    map.entries.extend_from_slice(user_key);
                    map.entries.extend_from_slice(value);
                    map.len += 1;
                }
                Err(e) => bad = Some(e),
            },
        }
        Ok(())
    })?;
    if let Some(detail) = bad {
        return Err(StateError::Encode { name: meta.name.clone(), detail });
    }
    map.flush_into(out);
    Ok(())
}

/// The rows of one map-state key gathered so far: its user entries, each user key followed by
/// its value (both MessagePack), as a canonical map value holds them after its header.
#[derive(Default)]
struct MapBuffer {
    key: Vec<u8>,
    entries: Vec<u8>,
    len: usize,
}

impl MapBuffer {
    fn clear(&mut self) {
        self.key.clear();
        self.entries.clear();
        self.len = 0;
    }

    /// Appends the gathered key's entry, if any, and starts over.
    fn flush_into(&mut self, out: &mut EntryAppender<'_>) {
        if self.len > 0 {
            out.push_with(&self.key, |v| {
                codec::write_map_header(self.len, v);
                v.extend_from_slice(&self.entries);
            });
        }
        self.clear();
    }
}
