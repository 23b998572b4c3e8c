//! Weir's state: what operators keep between records, and how it is captured and restored.
//!
//! * [`keyed`]: the heap (`hashmap`) keyed backend with value, list, map and reducing state,
//!   declared by name through descriptors. Each key group's map is shared copy-on-write with the
//!   snapshot, so the synchronous part of a checkpoint costs one pointer copy per key group and
//!   only the key groups written during the asynchronous upload are ever copied.
//! * [`format`]: the key-group-indexed state file (canonical: backend independent, self-describing
//!   MessagePack values, a CRC32C per key group).
//! * [`operator`]: operator (non-keyed) list state for sources and sinks.

pub mod codec;
pub mod error;
pub mod format;
pub mod keyed;
pub mod operator;

pub use error::StateError;
pub use keyed::{
    HeapKeyedBackend, Key, KeyScope, KeyedSnapshot, ListState, ListStateDescriptor, MapState, MapStateDescriptor,
    ReducingState, ReducingStateDescriptor, StateData, ValueState, ValueStateDescriptor,
};
pub use operator::{OperatorStateSnapshot, OperatorStateStore};
