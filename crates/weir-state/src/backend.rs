//! The keyed state backend an operator subtask uses, chosen by `state.backend.type`.
//!
//! Two kinds: the heap backend (typed values in hash maps, no serialization on access) and store
//! backends (serialized rows in a [`KvStore`], e.g. rocksdb). They are an enum rather than a
//! trait object so the heap path stays a direct, inlinable call.

use crate::codec;
use crate::descriptors::{
    Key, ListState, ListStateDescriptor, MapState, MapStateDescriptor, NamespacedState, ReducingState,
    ReducingStateDescriptor, StateData, ValueState, ValueStateDescriptor,
};
use crate::error::StateError;
use crate::format::{StateKind, StateMeta};
use crate::heap::{HeapKeyedBackend, HeapScope};
use crate::scope_ops::KeyedOps;
use crate::serialized::{SerializedKeyedBackend, SerializedScope, StoreFactory};
use crate::snapshot::{KeyedSnapshot, RestoredKeyedState, SnapshotRequest};
use crate::timers::{queue_name, FiredTimer, TimeDomain, TimerServiceId};
use crate::vec_map::VecMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_core::{CheckpointId, JobId, KeyGroupRange, OperatorId};

/// Which keyed backend operators use.
#[derive(Debug, Clone, Default)]
pub enum StateBackend {
    /// `hashmap`: state on the heap.
    #[default]
    HashMap,
    /// A store backend, e.g. `rocksdb`.
    Store(Arc<dyn StoreFactory>),
}

impl StateBackend {
    pub fn name(&self) -> &'static str {
        match self {
            StateBackend::HashMap => "hashmap",
            StateBackend::Store(f) => f.name(),
        }
    }
}

/// Which operator subtask a backend serves.
#[derive(Debug, Clone)]
pub struct StoreContext {
    /// Where the store reports gauges about itself (RocksDB's native properties).
    pub native_metrics: NativeMetrics,
    pub job_id: JobId,
    pub operator_id: OperatorId,
    /// Display name with the subtask, for errors.
    pub operator: String,
    pub subtask: u32,
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
}

/// Gauges a store reports about itself, by name (RocksDB's native properties, as Flink's
/// `state.backend.rocksdb.metrics.*` report them), set by the task thread when it samples them
/// and read by the metric reporters. Sampling on the task thread keeps the store single-threaded.
#[derive(Debug, Clone, Default)]
pub struct NativeMetrics(Arc<std::sync::Mutex<Vec<(String, f64)>>>);

impl NativeMetrics {
    pub fn set(&self, values: Vec<(String, f64)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = values;
    }

    pub fn read(&self) -> Vec<(String, f64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Keyed state of one operator subtask.
pub enum KeyedStateBackend<K> {
    Heap(HeapKeyedBackend<K>),
    Serialized(SerializedKeyedBackend<K>),
}

impl<K: Key> KeyedStateBackend<K> {
    /// Creates the backend and restores `restored` into it. A native snapshot of another backend
    /// is refused, naming the backend that wrote it and the way out (a canonical savepoint).
    pub fn create(
        choice: &StateBackend,
        ctx: &StoreContext,
        restored: &RestoredKeyedState,
    ) -> Result<Self, StateError> {
        if let Some(foreign) = restored.native.iter().find(|n| n.handle.backend != choice.name()) {
            return Err(StateError::ForeignNativeSnapshot {
                operator: ctx.operator.clone(),
                written_by: foreign.handle.backend.clone(),
                backend: choice.name(),
            });
        }
        match choice {
            StateBackend::HashMap => {
                let mut heap = HeapKeyedBackend::new(ctx.max_parallelism, ctx.key_groups);
                heap.restore(restored)?;
                Ok(KeyedStateBackend::Heap(heap))
            }
            StateBackend::Store(factory) => {
                let store = factory.create(ctx, restored)?;
                Ok(KeyedStateBackend::Serialized(SerializedKeyedBackend::new(
                    store,
                    ctx.max_parallelism,
                    ctx.key_groups,
                )))
            }
        }
    }

    pub fn value_state<T: StateData>(&mut self, d: &ValueStateDescriptor<T>) -> Result<ValueState<T>, StateError> {
        let slot = match self {
            KeyedStateBackend::Heap(h) => h.declare::<T>(StateMeta::new(&d.name, StateKind::Value), None)?,
            KeyedStateBackend::Serialized(s) => s.declare::<T>(StateMeta::new(&d.name, StateKind::Value), None)?,
        };
        Ok(ValueState::at(slot))
    }

    pub fn list_state<T: StateData>(&mut self, d: &ListStateDescriptor<T>) -> Result<ListState<T>, StateError> {
        let slot = match self {
            KeyedStateBackend::Heap(h) => h.declare::<Vec<T>>(StateMeta::new(&d.name, StateKind::List), None)?,
            KeyedStateBackend::Serialized(s) => s.declare::<T>(StateMeta::new(&d.name, StateKind::List), None)?,
        };
        Ok(ListState::at(slot))
    }

    pub fn map_state<UK, UV>(&mut self, d: &MapStateDescriptor<UK, UV>) -> Result<MapState<UK, UV>, StateError>
    where
        UK: StateData + Ord,
        UV: StateData,
    {
        let slot = match self {
            KeyedStateBackend::Heap(h) => {
                h.declare::<BTreeMap<UK, UV>>(StateMeta::new(&d.name, StateKind::Map), None)?
            }
            KeyedStateBackend::Serialized(s) => s.declare::<UV>(StateMeta::new(&d.name, StateKind::Map), None)?,
        };
        Ok(MapState::at(slot))
    }

    /// A namespaced state: one `V` per key and namespace `N` (the window operator's contents, by
    /// window). Stored like map state, with `namespace` (what the namespaces are, e.g.
    /// `window:tumbling-event-time`) recorded, so a restore into another kind of namespace is
    /// refused.
    pub fn namespaced_state<N: StateData + Ord, V: StateData>(
        &mut self,
        name: &str,
        namespace: &str,
    ) -> Result<NamespacedState<N, V>, StateError> {
        let meta = StateMeta { namespace: Some(namespace.to_string()), ..StateMeta::new(name, StateKind::Map) };
        let slot = match self {
            KeyedStateBackend::Heap(h) => h.declare::<VecMap<N, V>>(meta, None)?,
            KeyedStateBackend::Serialized(s) => s.declare::<V>(meta, None)?,
        };
        Ok(NamespacedState::at(slot))
    }

    pub fn reducing_state<T: StateData>(
        &mut self,
        d: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>, StateError> {
        let reduce = Some(d.reduce.clone());
        let slot = match self {
            KeyedStateBackend::Heap(h) => h.declare::<T>(StateMeta::new(&d.name, StateKind::Reducing), reduce)?,
            KeyedStateBackend::Serialized(s) => s.declare::<T>(StateMeta::new(&d.name, StateKind::Reducing), reduce)?,
        };
        Ok(ReducingState::at(slot))
    }

    /// Declares the timer service `name` (two queues: event time and processing time), restoring
    /// its timers. Timers are keyed state: they are in every snapshot and move with their keys.
    pub fn timer_service(&mut self, name: &str) -> Result<TimerServiceId, StateError> {
        let (event, processing) =
            (queue_name(name, TimeDomain::EventTime), queue_name(name, TimeDomain::ProcessingTime));
        let (event, processing) = match self {
            KeyedStateBackend::Heap(h) => (h.declare_timers(&event)?, h.declare_timers(&processing)?),
            KeyedStateBackend::Serialized(s) => (s.declare_timers(&event)?, s.declare_timers(&processing)?),
        };
        Ok(TimerServiceId::new(event, processing))
    }

    /// Removes and returns the earliest timer of `service` in `domain` if it is due at `time`
    /// (its timestamp is at most `time`). One at a time: firing a timer may register others.
    pub fn pop_due_timer(
        &mut self,
        service: TimerServiceId,
        domain: TimeDomain,
        time: i64,
    ) -> Result<Option<FiredTimer<K>>, StateError> {
        let queue = service.queue(domain);
        let (popped, queues) = match self {
            KeyedStateBackend::Heap(h) => (h.timers.pop_due(queue, time), &h.timers),
            KeyedStateBackend::Serialized(s) => (s.pop_due_timer(queue, time)?, &s.timers),
        };
        let Some((key_group, timer)) = popped else { return Ok(None) };
        let key = codec::decode(&timer.key).map_err(|detail| StateError::Decode {
            name: queues.queues[queue].meta.name.clone(),
            key_group,
            what: "timer key",
            detail,
        })?;
        Ok(Some(FiredTimer { key, timestamp: timer.timestamp, namespace: timer.namespace }))
    }

    /// The time of the earliest timer of `service` in `domain`.
    pub fn next_timer(&self, service: TimerServiceId, domain: TimeDomain) -> Option<i64> {
        let queue = service.queue(domain);
        match self {
            KeyedStateBackend::Heap(h) => h.timers.next_time(queue),
            KeyedStateBackend::Serialized(s) => s.timers.next_time(queue),
        }
    }

    /// Scopes state access to `key`. Fails when the key does not belong to this subtask, which
    /// would mean a routing bug. Always inlined: it is on every record's path, and as a call it
    /// cost the reference benchmark about 15 % (the key group's hash chain no longer overlapped
    /// with the caller's work).
    #[inline(always)]
    pub fn scope<'a>(&'a mut self, key: &'a K) -> Result<KeyScope<'a, K>, StateError> {
        let at = self.locate(key);
        self.scope_at(key, at)
    }

    /// Where `key`'s state is: its key group and, on the heap, its in-memory hash. Locating a
    /// batch of records before scoping them ([`Self::scope_at`]) lets their hash chains run side
    /// by side instead of each stalling the record it belongs to.
    #[inline]
    pub fn locate(&self, key: &K) -> KeyLocation {
        match self {
            KeyedStateBackend::Heap(h) => h.locate(key),
            KeyedStateBackend::Serialized(s) => s.locate(key),
        }
    }

    /// Scopes state access to `key`, located by [`Self::locate`] on this backend.
    #[inline(always)]
    pub fn scope_at<'a>(&'a mut self, key: &'a K, at: KeyLocation) -> Result<KeyScope<'a, K>, StateError> {
        let inner = match self {
            KeyedStateBackend::Heap(h) => Scope::Heap(h.scope_at(key, at)?),
            KeyedStateBackend::Serialized(s) => Scope::Serialized(s.scope_at(key, at.key_group)?),
        };
        Ok(KeyScope { inner })
    }

    /// Whether a keyed operator gains from holding records back in batches now. On the heap:
    /// while its state fits a core's faster caches, so the batch's keys are
    /// located together ([`Self::locate`]) and their hash chains overlap. In a store: while its
    /// reads often miss its cache, so the batch's rows are read in one lookup ([`Self::prefetch`]).
    pub fn batching_pays(&self) -> bool {
        match self {
            KeyedStateBackend::Heap(h) => h.batching_pays(),
            KeyedStateBackend::Serialized(s) => s.prefetch_worthwhile(),
        }
    }

    /// Loads the state rows the records with `keys` (in order) are about to read, in one batched
    /// lookup; a hint that changes no result.
    pub fn prefetch(&mut self, keys: &[K]) -> Result<(), StateError> {
        match self {
            KeyedStateBackend::Heap(_) => Ok(()),
            KeyedStateBackend::Serialized(s) => s.prefetch(keys),
        }
    }

    /// Whether the backend can prefetch at all (a serialized store); decided once per operator.
    pub fn can_prefetch(&self) -> bool {
        matches!(self, KeyedStateBackend::Serialized(_))
    }

    /// The synchronous part of a snapshot.
    pub fn snapshot(&mut self, request: &SnapshotRequest) -> Result<KeyedSnapshot, StateError> {
        match self {
            KeyedStateBackend::Heap(h) => Ok(KeyedSnapshot::Heap(h.snapshot())),
            KeyedStateBackend::Serialized(s) => s.snapshot(request).map(KeyedSnapshot::Store),
        }
    }

    pub fn checkpoint_complete(&mut self, id: CheckpointId) {
        if let KeyedStateBackend::Serialized(s) = self {
            s.checkpoint_complete(id)
        }
    }
}

/// Where a key's state is in a backend, computed by [`KeyedStateBackend::locate`]: its key
/// group, and on the heap its in-memory hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLocation {
    key_group: u32,
    hash: u64,
}

impl KeyLocation {
    pub(crate) fn new(key_group: u32, hash: u64) -> Self {
        KeyLocation { key_group, hash }
    }

    pub(crate) fn parts(self) -> (u32, u64) {
        (self.key_group, self.hash)
    }
}

/// Keyed state access for the current key.
pub struct KeyScope<'a, K> {
    pub(crate) inner: Scope<'a, K>,
}

pub(crate) enum Scope<'a, K> {
    Heap(HeapScope<'a, K>),
    Serialized(SerializedScope<'a, K>),
}

impl<K: Key> KeyScope<'_, K> {
    pub fn key(&self) -> &K {
        match &self.inner {
            Scope::Heap(h) => h.key(),
            Scope::Serialized(s) => s.key(),
        }
    }

    /// Registers a timer of the current key at `timestamp` in `namespace` (empty for none).
    /// Registering the same timer twice keeps one.
    pub fn register_timer(
        &mut self,
        service: TimerServiceId,
        domain: TimeDomain,
        timestamp: i64,
        namespace: &[u8],
    ) -> Result<(), StateError> {
        self.inner.change_timer(service.queue(domain), timestamp, namespace, true)
    }

    /// Deletes a timer of the current key; nothing happens when there is none.
    pub fn delete_timer(
        &mut self,
        service: TimerServiceId,
        domain: TimeDomain,
        timestamp: i64,
        namespace: &[u8],
    ) -> Result<(), StateError> {
        self.inner.change_timer(service.queue(domain), timestamp, namespace, false)
    }
}
