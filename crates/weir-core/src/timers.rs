//! Timers of a keyed operator (Flink's `InternalTimerService` queues): a timer is a timestamp, a
//! key and a namespace (the window, for window operators), held with set semantics (registering
//! the same timer twice keeps one) and fired in timestamp order. Pure: the runtime asks for the
//! timers due at a watermark or a processing time, and snapshots the queue per key group.
//!
//! The byte form is a format contract: the timestamp with its sign bit flipped, big-endian (so
//! byte order is time order, negative times included), then the key's length (u32, big-endian),
//! the key's canonical bytes and the namespace's bytes.

use crate::watermark::Timestamp;
use std::collections::BTreeSet;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timer {
    pub timestamp: Timestamp,
    pub key: Vec<u8>,
    pub namespace: Vec<u8>,
}

/// The timer's bytes; their order is the firing order.
pub fn encode(timer: &Timer) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + timer.key.len() + timer.namespace.len());
    out.extend_from_slice(&((timer.timestamp as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(&(timer.key.len() as u32).to_be_bytes());
    out.extend_from_slice(&timer.key);
    out.extend_from_slice(&timer.namespace);
    out
}

/// The timer of [`encode`]'s bytes, or `None` for bytes that are not one.
pub fn decode(bytes: &[u8]) -> Option<Timer> {
    let time: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let key_len: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    let key_end = 12usize.checked_add(u32::from_be_bytes(key_len) as usize)?;
    Some(Timer {
        timestamp: (u64::from_be_bytes(time) ^ (1 << 63)) as i64,
        key: bytes.get(12..key_end)?.to_vec(),
        namespace: bytes.get(key_end..)?.to_vec(),
    })
}

/// One timer queue (event time or processing time) of one operator subtask, partitioned by key
/// group like keyed state (Flink's `KeyGroupPartitionedPriorityQueue`): a set per key group, so a
/// snapshot writes each key group's timers and a restore or rescale moves them with their keys;
/// and an index of each key group's earliest timer, so the next timer to fire is found in
/// O(log n) whatever the number of key groups.
///
/// Timers are held as their [`encode`]d bytes, whose order is the firing order. Each key group's
/// set sits behind an `Arc`: a snapshot clones the `Arc`s, and a change to a key group a snapshot
/// still holds copies that set first.
#[derive(Debug, Clone, Default)]
pub struct KeyGroupedTimers {
    groups: Vec<Arc<BTreeSet<Vec<u8>>>>,
    /// `(earliest timer, key group index)` of every non-empty key group.
    heads: BTreeSet<(Vec<u8>, usize)>,
    len: usize,
}

impl KeyGroupedTimers {
    /// A queue over `key_groups` key groups (indexes `0..key_groups` within the subtask's range).
    pub fn new(key_groups: usize) -> Self {
        KeyGroupedTimers { groups: vec![Arc::default(); key_groups], heads: BTreeSet::new(), len: 0 }
    }

    /// Registers a timer (its bytes) in key group `group`; false when it was already registered.
    pub fn register(&mut self, group: usize, timer: Vec<u8>) -> bool {
        if self.groups[group].contains(&timer) {
            return false;
        }
        let old_head = self.groups[group].first().cloned();
        if old_head.as_ref().is_none_or(|h| timer < *h) {
            if let Some(h) = old_head {
                self.heads.remove(&(h, group));
            }
            self.heads.insert((timer.clone(), group));
        }
        Arc::make_mut(&mut self.groups[group]).insert(timer);
        self.len += 1;
        true
    }

    /// Deletes a timer; false when there was none.
    pub fn delete(&mut self, group: usize, timer: &[u8]) -> bool {
        if !self.groups[group].contains(timer) {
            return false;
        }
        let was_head = self.groups[group].first().is_some_and(|h| h.as_slice() == timer);
        let set = Arc::make_mut(&mut self.groups[group]);
        set.remove(timer);
        self.len -= 1;
        if was_head {
            self.heads.remove(&(timer.to_vec(), group));
            if let Some(next) = set.first() {
                self.heads.insert((next.clone(), group));
            }
        }
        true
    }

    /// The earliest timer's time: when to wake up for processing-time timers.
    pub fn next_time(&self) -> Option<Timestamp> {
        self.heads.first().and_then(|(b, _)| decode(b)).map(|t| t.timestamp)
    }

    /// Removes and returns the earliest timer if it is due at `time` (`timestamp <= time`), with
    /// its key group index. One at a time, so a timer registered while firing fires in the same
    /// round when it is due too.
    pub fn pop_due(&mut self, time: Timestamp) -> Option<(usize, Timer)> {
        let (bytes, group) = self.heads.first()?;
        let timer = decode(bytes)?;
        if timer.timestamp > time {
            return None;
        }
        let (bytes, group) = (bytes.clone(), *group);
        self.delete(group, &bytes);
        Some((group, timer))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The timers of key group `group`, earliest first, frozen (for snapshots).
    pub fn group(&self, group: usize) -> Arc<BTreeSet<Vec<u8>>> {
        self.groups[group].clone()
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ts: i64, key: &str) -> Timer {
        Timer { timestamp: ts, key: key.as_bytes().to_vec(), namespace: vec![] }
    }

    fn pop_all(q: &mut KeyGroupedTimers, at: Timestamp) -> Vec<Timer> {
        std::iter::from_fn(|| q.pop_due(at).map(|(_, t)| t)).collect()
    }

    #[test]
    fn set_semantics_and_time_order_across_key_groups() {
        let mut q = KeyGroupedTimers::new(3);
        assert!(q.register(0, encode(&t(20, "a"))));
        assert!(!q.register(0, encode(&t(20, "a"))), "the same timer twice is one timer");
        q.register(2, encode(&t(-5, "b")));
        q.register(0, encode(&t(10, "a")));
        q.register(1, encode(&t(10, "c")));
        assert_eq!(q.next_time(), Some(-5));
        assert!(q.delete(0, &encode(&t(10, "a"))));
        assert!(!q.delete(0, &encode(&t(10, "a"))));
        assert_eq!(pop_all(&mut q, 19), vec![t(-5, "b"), t(10, "c")]);
        assert_eq!(q.pop_due(19), None);
        assert_eq!(q.pop_due(20), Some((0, t(20, "a"))));
        assert!(q.is_empty());
    }

    #[test]
    fn a_snapshot_of_a_group_is_not_changed_by_later_registrations() {
        let mut q = KeyGroupedTimers::new(1);
        q.register(0, encode(&t(1, "a")));
        let frozen = q.group(0);
        q.register(0, encode(&t(2, "a")));
        q.pop_due(1);
        assert_eq!(frozen.len(), 1);
        assert_eq!(q.group(0).len(), 1);
    }

    proptest! {
        #[test]
        fn bytes_round_trip_and_order_like_timestamps(
            a in any::<i64>(), b in any::<i64>(),
            key in proptest::collection::vec(any::<u8>(), 0..20),
            ns in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let x = Timer { timestamp: a, key: key.clone(), namespace: ns.clone() };
            let y = Timer { timestamp: b, key, namespace: ns };
            prop_assert_eq!(decode(&encode(&x)), Some(x.clone()));
            if a < b {
                prop_assert!(encode(&x) < encode(&y));
            }
        }

        /// Whatever is registered and deleted, due timers come out in time order, each live
        /// timer exactly once, and nothing later than asked for.
        #[test]
        fn due_timers_come_out_in_order_and_only_once(
            ops in proptest::collection::vec((any::<bool>(), -50i64..50, 0usize..7), 0..200),
            at in -50i64..50,
        ) {
            let mut q = KeyGroupedTimers::new(4);
            let mut model = std::collections::BTreeSet::new();
            for (add, ts, key) in ops {
                let timer = t(ts, &key.to_string());
                let group = key % 4;
                if add {
                    prop_assert_eq!(q.register(group, encode(&timer)), model.insert(encode(&timer)));
                } else {
                    prop_assert_eq!(q.delete(group, &encode(&timer)), model.remove(&encode(&timer)));
                }
                prop_assert_eq!(q.len(), model.len());
            }
            let due = pop_all(&mut q, at);
            let expected: Vec<Timer> = model.iter().filter_map(|b| decode(b)).filter(|t| t.timestamp <= at).collect();
            prop_assert_eq!(due, expected);
            prop_assert!(q.next_time().is_none_or(|n| n > at));
        }
    }
}
