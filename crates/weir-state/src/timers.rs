//! Timers as keyed state: each timer service of an operator is two queues (event time and
//! processing time), stored per key group like any keyed state, under Flink's names
//! (`_timer_state/event_<service>`, `_timer_state/processing_<service>`), so checkpoints,
//! canonical and native savepoints, restores and rescales carry them exactly as they carry the
//! keys they belong to.
//!
//! Both backends keep the queues in memory ([`TimerQueues`], ordered for firing); the heap backend
//! writes them into its state files, the store backends also keep one row per timer in the
//! queue's own table (a column family in rocksdb), so native snapshots hold them too.

use crate::codec;
use crate::descriptors::Key;
use crate::error::StateError;
use crate::format::{StateKind, StateMeta};
use weir_core::key_group::assign_to_key_group;
use weir_core::timers::{decode, KeyGroupedTimers, Timer};
use weir_core::watermark::Timestamp;
use weir_core::KeyGroupRange;

/// The clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// Fires when the operator's watermark reaches the timer's time.
    EventTime,
    /// Fires when the wall clock reaches the timer's time.
    ProcessingTime,
}

/// A declared timer service: the handle to its two queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerServiceId {
    event: usize,
    processing: usize,
}

impl TimerServiceId {
    pub(crate) fn new(event: usize, processing: usize) -> Self {
        TimerServiceId { event, processing }
    }

    pub(crate) fn queue(&self, domain: TimeDomain) -> usize {
        match domain {
            TimeDomain::EventTime => self.event,
            TimeDomain::ProcessingTime => self.processing,
        }
    }
}

/// The state name of one queue of a timer service, as Flink names it.
pub fn queue_name(service: &str, domain: TimeDomain) -> String {
    match domain {
        TimeDomain::EventTime => format!("_timer_state/event_{service}"),
        TimeDomain::ProcessingTime => format!("_timer_state/processing_{service}"),
    }
}

/// A timer that fell due, removed from its queue, with its key decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct FiredTimer<K> {
    pub key: K,
    pub timestamp: Timestamp,
    /// The namespace's bytes (empty for a process function's timers; the window for windows).
    pub namespace: Vec<u8>,
}

/// Decodes a timer's key and checks it belongs to `key_group`: a timer under the wrong key group
/// would fire on a subtask that does not own its key.
pub(crate) fn decode_timer<K: Key>(
    name: &str,
    key_group: u32,
    bytes: &[u8],
    max_parallelism: u32,
) -> Result<FiredTimer<K>, StateError> {
    let err = |what, detail: String| StateError::Decode { name: name.to_string(), key_group, what, detail };
    let timer = decode(bytes).ok_or_else(|| err("timer", "not a timer".into()))?;
    let key: K = codec::decode(&timer.key).map_err(|d| err("key", d))?;
    let actual = assign_to_key_group(&key, max_parallelism);
    if actual != key_group {
        return Err(StateError::KeyGroupMismatch { name: name.to_string(), stored: key_group, actual });
    }
    Ok(FiredTimer { key, timestamp: timer.timestamp, namespace: timer.namespace })
}

/// The bytes of a timer of the key whose canonical bytes are `key`.
pub(crate) fn timer_bytes(timestamp: Timestamp, key: &[u8], namespace: &[u8]) -> Vec<u8> {
    weir_core::timers::encode(&Timer { timestamp, key: key.to_vec(), namespace: namespace.to_vec() })
}

/// One queue: its state name and kind, its timers, and (store backends) its table.
pub(crate) struct Queue {
    pub meta: StateMeta,
    pub timers: KeyGroupedTimers,
    /// The store's state index of the queue's table (store backends only).
    pub table: usize,
}

/// The timer queues of one operator subtask, in declaration order.
pub(crate) struct TimerQueues {
    key_groups: KeyGroupRange,
    pub queues: Vec<Queue>,
}

impl TimerQueues {
    pub fn new(key_groups: KeyGroupRange) -> Self {
        TimerQueues { key_groups, queues: Vec::new() }
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.queues.iter().position(|q| q.meta.name == name)
    }

    /// Adds a queue holding `restored` timers `(key group, bytes)`, each checked to decode to a
    /// key of its key group.
    pub fn add<K: Key>(
        &mut self,
        name: &str,
        table: usize,
        restored: impl IntoIterator<Item = (u32, Vec<u8>)>,
        max_parallelism: u32,
    ) -> Result<usize, StateError> {
        let mut timers = KeyGroupedTimers::new(self.key_groups.count as usize);
        for (kg, bytes) in restored {
            decode_timer::<K>(name, kg, &bytes, max_parallelism)?;
            let Some(local) = self.key_groups.offset_of(kg) else {
                continue; // another subtask's key group (a store restored unclipped)
            };
            timers.register(local, bytes);
        }
        self.queues.push(Queue { meta: StateMeta::new(name, StateKind::Timers), timers, table });
        Ok(self.queues.len() - 1)
    }

    /// Registers a timer of key group `key_group`; false when it was already registered.
    pub fn register(&mut self, queue: usize, key_group: u32, bytes: Vec<u8>) -> bool {
        let local = self.local(key_group);
        self.queues[queue].timers.register(local, bytes)
    }

    pub fn delete(&mut self, queue: usize, key_group: u32, bytes: &[u8]) -> bool {
        let local = self.local(key_group);
        self.queues[queue].timers.delete(local, bytes)
    }

    /// The earliest timer of `queue` if due at `time`, removed, with its key group.
    pub fn pop_due(&mut self, queue: usize, time: Timestamp) -> Option<(u32, Timer)> {
        let (local, timer) = self.queues[queue].timers.pop_due(time)?;
        Some((self.key_groups.start + local as u32, timer))
    }

    pub fn next_time(&self, queue: usize) -> Option<Timestamp> {
        self.queues[queue].timers.next_time()
    }

    fn local(&self, key_group: u32) -> usize {
        match self.key_groups.offset_of(key_group) {
            Some(local) => local,
            None => unreachable!("a scope exists only for keys of the subtask's key groups"),
        }
    }
}
