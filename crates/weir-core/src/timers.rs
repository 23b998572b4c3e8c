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

/// One kind of timers (event time or processing time) of one operator subtask.
#[derive(Debug, Clone, Default)]
pub struct TimerQueue {
    timers: BTreeSet<Vec<u8>>,
}

impl TimerQueue {
    /// Registers a timer; false when it was already registered.
    pub fn register(&mut self, timer: &Timer) -> bool {
        self.timers.insert(encode(timer))
    }

    /// Deletes a timer; false when there was none.
    pub fn delete(&mut self, timer: &Timer) -> bool {
        self.timers.remove(&encode(timer))
    }

    /// The earliest timer's time: when to wake up for processing-time timers.
    pub fn next_time(&self) -> Option<Timestamp> {
        self.timers.first().and_then(|b| decode(b)).map(|t| t.timestamp)
    }

    /// Removes and returns the timers with `timestamp <= time`, earliest first.
    pub fn pop_due(&mut self, time: Timestamp) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(first) = self.timers.first() {
            match decode(first) {
                Some(t) if t.timestamp <= time => {
                    self.timers.pop_first();
                    due.push(t);
                }
                _ => break,
            }
        }
        due
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// Every timer, earliest first (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = Timer> + '_ {
        self.timers.iter().filter_map(|b| decode(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ts: i64, key: &str) -> Timer {
        Timer { timestamp: ts, key: key.as_bytes().to_vec(), namespace: vec![] }
    }

    #[test]
    fn set_semantics_and_time_order() {
        let mut q = TimerQueue::default();
        assert!(q.register(&t(20, "a")));
        assert!(!q.register(&t(20, "a")), "the same timer twice is one timer");
        q.register(&t(-5, "b"));
        q.register(&t(10, "a"));
        assert_eq!(q.next_time(), Some(-5));
        assert!(q.delete(&t(10, "a")));
        assert_eq!(q.pop_due(19), vec![t(-5, "b")]);
        assert_eq!(q.pop_due(20), vec![t(20, "a")]);
        assert!(q.is_empty());
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

        #[test]
        fn due_timers_come_out_in_order_and_only_once(times in proptest::collection::vec(-1000i64..1000, 0..100), at in -1000i64..1000) {
            let mut q = TimerQueue::default();
            for (i, ts) in times.iter().enumerate() {
                q.register(&t(*ts, &(i % 7).to_string()));
            }
            let due = q.pop_due(at);
            prop_assert!(due.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
            prop_assert!(due.iter().all(|t| t.timestamp <= at));
            prop_assert!(q.iter().all(|t| t.timestamp > at));
            prop_assert!(q.pop_due(at).is_empty());
        }
    }
}
