//! Part of `--suite savepoints`: a heap backend's canonical snapshot encoded apart from any job,
//! in CPU time per entry (which varies far less here than the wall-clock time of a savepoint of a
//! running job, so it tells encoder changes apart). `keys` u64 keys in 128 key groups, each
//! snapshot written to a sink:
//! * the first snapshot, which sorts every key group;
//! * the second, which sorts again and records each key group's order (its keys held still);
//! * later ones of the same keys, written in the recorded order;
//! * snapshots after keys came and went (0.1 % of the keys replaced before each), which merge the
//!   changes into the recorded order.

use crate::median;
use anyhow::Result;
use serde::Serialize;
use weir_core::KeyGroupRange;
use weir_state::{HeapKeyedBackend, KeyedStateBackend, ValueState, ValueStateDescriptor};

#[derive(Serialize)]
pub struct EncodingResult {
    keys: u64,
    snapshot_bytes: u64,
    first_ns_per_entry: f64,
    recording_ns_per_entry: f64,
    /// Medians of three.
    in_order_ns_per_entry: f64,
    keys_changed_ns_per_entry: f64,
}

impl std::fmt::Display for EncodingResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU per entry: first {:.1} ns, recording {:.1} ns, in order {:.1} ns, after 0.1 % of keys changed {:.1} ns",
            self.first_ns_per_entry, self.recording_ns_per_entry, self.in_order_ns_per_entry, self.keys_changed_ns_per_entry
        )
    }
}

/// CPU seconds this process has used (all threads: the snapshot's encoders).
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the timespec we pass, nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

pub fn run(keys: u64) -> Result<EncodingResult> {
    let mut backend: KeyedStateBackend<u64> =
        KeyedStateBackend::Heap(HeapKeyedBackend::new(128, KeyGroupRange::inclusive(0, 127)));
    let count: ValueState<u64> = backend.value_state(&ValueStateDescriptor::new("count"))?;
    for k in 0..keys {
        count.update(&mut backend.scope(&k)?, k % 100)?;
    }
    let mut snapshot_bytes = 0;
    let mut snapshot = |backend: &mut KeyedStateBackend<u64>| -> Result<f64> {
        let KeyedStateBackend::Heap(heap) = backend else { unreachable!("a heap backend") };
        let frozen = heap.snapshot();
        let cpu = cpu_seconds();
        let (_, written) = frozen.write(std::io::sink())?;
        snapshot_bytes = written.size;
        Ok((cpu_seconds() - cpu) / keys as f64 * 1e9)
    };
    let first = snapshot(&mut backend)?;
    let recording = snapshot(&mut backend)?;
    let in_order = median((0..3).map(|_| snapshot(&mut backend)).collect::<Result<_>>()?);
    // Keys replaced: the oldest go, as many new ones come.
    let per_round = (keys / 1000).max(1);
    let mut next = keys;
    let mut changed = Vec::new();
    for round in 0..3 {
        for i in 0..per_round {
            count.clear(&mut backend.scope(&(round * per_round + i))?)?;
            count.update(&mut backend.scope(&next)?, 1)?;
            next += 1;
        }
        changed.push(snapshot(&mut backend)?);
    }
    Ok(EncodingResult {
        keys,
        snapshot_bytes,
        first_ns_per_entry: first,
        recording_ns_per_entry: recording,
        in_order_ns_per_entry: in_order,
        keys_changed_ns_per_entry: median(changed),
    })
}
