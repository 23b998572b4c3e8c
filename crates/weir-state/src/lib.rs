//! Weir's state: what operators keep between records, and how it is captured and restored.
//!
//! * [`descriptors`]: how operators declare keyed state (value, list, map, reducing) and use it
//!   through handles and the current key's [`KeyScope`], the same on every backend.
//! * [`backend`]: the backend a subtask uses (`state.backend.type`).
//! * [`heap`]: the `hashmap` backend. Each key group's map is shared copy-on-write with the
//!   snapshot, so the synchronous part of a checkpoint costs one pointer copy per key group.
//! * [`serialized`]: keyed state over a byte-oriented store ([`KvStore`], implemented by the
//!   `weir-rocksdb` crate), its row layout, and conversion to and from the canonical format.
//! * [`write_back`]: a write-back cache of hot rows in front of a [`KvStore`].
//! * [`snapshot`]: the seam with checkpoint storage (files, requests, restored handles).
//! * [`checksum`]: whole-file sizes and CRC32C, checked before a restore reads a file.
//! * [`format`]: the key-group-indexed state file (canonical: backend independent, self-describing
//!   MessagePack values, a CRC32C per key group).
//! * [`operator`]: operator (non-keyed) list state for sources and sinks.
//! * [`timers`]: timer services as keyed state (event-time and processing-time queues per key
//!   group), in both backends and every snapshot.

pub mod backend;
pub mod checksum;
pub mod codec;
pub mod descriptors;
pub mod error;
pub mod format;
pub mod heap;
pub mod operator;
pub mod parallel;
mod scope_ops;
pub mod serialized;
pub mod snapshot;
mod sorted_entries;
pub mod timers;
pub mod vec_map;
pub mod write_back;

pub use backend::{KeyLocation, KeyScope, KeyedStateBackend, NativeMetrics, StateBackend, StoreContext};
pub use descriptors::{
    Key, ListState, ListStateDescriptor, MapState, MapStateDescriptor, NamespacedState, ReducingState,
    ReducingStateDescriptor, StateData, ValueState, ValueStateDescriptor,
};
pub use error::StateError;
pub use heap::{HeapKeyedBackend, HeapSnapshot};
pub use operator::{OperatorStateSnapshot, OperatorStateStore};
pub use serialized::{KvStore, RowWrite, StoreFactory};
pub use snapshot::{
    KeyedSnapshot, NewFile, ResolvedNativeHandle, RestoredKeyedState, SnapshotFiles, SnapshotRequest, StateOutput,
    StoreSnapshot, WrittenKeyedState,
};
pub use timers::{FiredTimer, TimeDomain, TimerServiceId};
pub use write_back::{CacheCounts, WriteBackCache};
