//! The job's metrics, with Flink's names: records in and out per operator and subtask, input
//! watermarks, late records dropped, time blocked on full output channels.
//!
//! Counting sits on the hot path, so a count is written by one thread only (the task's) with a
//! plain load and store instead of a locked read-modify-write, and read by anyone (the REST
//! server, the Prometheus scrape) without stopping it: Flink's `SimpleCounter` is a plain `long`
//! for the same reason. Records out of an operator are not counted where they leave it (that
//! would cost a second count per record and operator) but derived from the graph: what its first
//! chained consumer counted in, or what its first network edge sent (see [`JobMetrics`]).
//! Counters start at 0 with every deployment (a restart), as a new task attempt's do in Flink.

use crate::graph::JobGraph;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonic count with a single writer.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    #[inline(always)]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Only the owning task calls this: load and store are not one atomic step, which is fine
    /// with one writer and never loses a count.
    #[inline(always)]
    pub fn add(&self, n: u64) {
        let c = &self.0;
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Records an operator was handed, counted in a plain field of the operator and published to the
/// shared count every [`RecordsIn::PUBLISH_EVERY`] records and at every event that passes the
/// operator (barriers, watermarks, flushes, timers): a count readers see at most that many records
/// behind while records flow, and exact at every checkpoint. Counting into the shared count per
/// record cost the reference job 3-4 % (a load and store through a pointer, per operator); this
/// costs an add and a predictable branch.
#[derive(Debug, Clone, Default)]
pub struct RecordsIn {
    local: u64,
    shared: Counter,
}

impl RecordsIn {
    pub const PUBLISH_EVERY: u64 = 256;

    #[inline(always)]
    pub fn inc(&mut self) {
        self.local += 1;
        if self.local.is_multiple_of(Self::PUBLISH_EVERY) {
            self.publish();
        }
    }

    /// Counts a batch of `n` records handed over at once, and publishes the count.
    #[inline]
    pub fn add_batch(&mut self, n: u64) {
        self.local += n;
        self.publish();
    }

    #[inline]
    pub fn publish(&self) {
        self.shared.0.store(self.local, Ordering::Relaxed);
    }

    /// The published count.
    pub fn get(&self) -> u64 {
        self.shared.get()
    }
}

/// A value set by one thread and read by others (a watermark).
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    fn new(initial: i64) -> Gauge {
        Gauge(Arc::new(AtomicI64::new(initial)))
    }

    #[inline]
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// No watermark yet: Flink reports `Long.MIN_VALUE`.
pub const NO_WATERMARK: i64 = i64::MIN;

/// What one operator subtask counts itself.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    /// `numRecordsIn`: records the operator was handed (a source's stays 0).
    pub records_in: RecordsIn,
    /// `currentInputWatermark`.
    pub input_watermark: Gauge,
    /// `numLateRecordsDropped` (window operators).
    pub late_records_dropped: Counter,
    /// What the operator's state store reports about itself (RocksDB's native properties).
    pub native: weir_state::NativeMetrics,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics {
            records_in: RecordsIn::default(),
            input_watermark: Gauge::new(NO_WATERMARK),
            late_records_dropped: Counter::default(),
            native: Default::default(),
        }
    }
}

impl OperatorMetrics {
    /// Publishes the records counted, and notes what an event tells about the operator's input
    /// (its watermark).
    #[inline]
    pub fn observe(&self, event: &crate::operator::ChainEvent<'_>) {
        self.records_in.publish();
        if let crate::operator::ChainEvent::Watermark(w) = event {
            self.input_watermark.set(*w);
        }
    }
}

/// What the network writer of one edge counts, for one producing subtask.
#[derive(Debug, Clone, Default)]
pub struct WriterMetrics {
    /// Records written into the edge (each record once, also on a broadcast edge).
    pub records_sent: Counter,
    /// Nanoseconds the task waited on a full channel: Flink's back-pressured time.
    pub backpressured_nanos: Counter,
}

/// One deployment's counters, by (operator index, subtask) and (edge index, subtask).
#[derive(Debug, Default)]
struct Registry {
    operators: HashMap<(usize, u32), OperatorMetrics>,
    writers: HashMap<(usize, u32), WriterMetrics>,
}

/// A reading of one operator subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorReading {
    pub records_in: u64,
    pub records_out: u64,
    pub input_watermark: i64,
    pub late_records_dropped: u64,
}

/// The job's metrics; the runtime registers counters as it deploys tasks, readers take readings.
#[derive(Debug, Default)]
pub struct JobMetrics {
    current: Mutex<Registry>,
}

impl JobMetrics {
    /// Forgets the previous deployment's counters (a restart starts from 0).
    pub(crate) fn reset(&self) {
        *self.registry() = Registry::default();
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn operator(&self, node: usize, subtask: u32) -> OperatorMetrics {
        self.registry().operators.entry((node, subtask)).or_default().clone()
    }

    pub(crate) fn writer(&self, edge: usize, subtask: u32) -> WriterMetrics {
        self.registry().writers.entry((edge, subtask)).or_default().clone()
    }

    /// A reading of operator `node`'s subtask. Records out: those its first chained consumer on
    /// its main output counted in, else those its first network edge on the main output sent (every
    /// main-output edge carries the same records). Side outputs are not counted.
    pub fn read_operator(&self, graph: &JobGraph, node: usize, subtask: u32) -> OperatorReading {
        let registry = self.registry();
        let own = registry.operators.get(&(node, subtask));
        let main: Vec<usize> =
            graph.nodes[node].outputs.iter().copied().filter(|&e| graph.edges[e].side_output.is_none()).collect();
        let chained = main.iter().find(|&&e| graph.edges[e].chained);
        let records_out = match chained {
            Some(&e) => registry.operators.get(&(graph.edges[e].to, subtask)).map_or(0, |m| m.records_in.get()),
            None => main
                .iter()
                .find(|&&e| !graph.edges[e].chained)
                .and_then(|&e| registry.writers.get(&(e, subtask)))
                .map_or(0, |w| w.records_sent.get()),
        };
        OperatorReading {
            records_in: own.map_or(0, |m| m.records_in.get()),
            records_out,
            input_watermark: own.map_or(NO_WATERMARK, |m| m.input_watermark.get()),
            late_records_dropped: own.map_or(0, |m| m.late_records_dropped.get()),
        }
    }

    /// What the state store of operator `node`'s subtask reports about itself (RocksDB's
    /// properties), by name; read only where served, not by the per-second rate sampling.
    pub fn native(&self, node: usize, subtask: u32) -> Vec<(String, f64)> {
        self.registry().operators.get(&(node, subtask)).map(|m| m.native.read()).unwrap_or_default()
    }

    /// Records the network writer of `edge` sent from `subtask`.
    pub fn records_sent(&self, edge: usize, subtask: u32) -> u64 {
        self.registry().writers.get(&(edge, subtask)).map_or(0, |w| w.records_sent.get())
    }

    /// Nanoseconds the subtask of `vertex` waited on full channels.
    pub fn backpressured_nanos(&self, graph: &JobGraph, vertex: usize, subtask: u32) -> u64 {
        let registry = self.registry();
        graph.chains[vertex]
            .nodes
            .iter()
            .flat_map(|&n| graph.nodes[n].outputs.iter())
            .filter_map(|&e| registry.writers.get(&(e, subtask)))
            .map(|w| w.backpressured_nanos.get())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_shared_between_its_writer_and_readers() {
        let c = Counter::default();
        let reader = c.clone();
        let writer = std::thread::spawn(move || {
            for _ in 0..100_000 {
                c.inc();
            }
            c.add(5);
        });
        writer.join().unwrap();
        assert_eq!(reader.get(), 100_005);
    }

    #[test]
    fn a_restart_starts_the_counts_over() {
        let m = JobMetrics::default();
        let mut counted = m.operator(0, 0);
        for _ in 0..7 {
            counted.records_in.inc();
        }
        assert_eq!(m.operator(0, 0).records_in.get(), 0, "published every 256 records or at an event");
        counted.observe(&crate::operator::ChainEvent::Flush);
        assert_eq!(m.operator(0, 0).records_in.get(), 7, "the same subtask shares its counter");
        for _ in 0..RecordsIn::PUBLISH_EVERY - 7 {
            counted.records_in.inc();
        }
        assert_eq!(m.operator(0, 0).records_in.get(), RecordsIn::PUBLISH_EVERY);
        m.reset();
        assert_eq!(m.operator(0, 0).records_in.get(), 0);
        assert_eq!(m.operator(0, 1).input_watermark.get(), NO_WATERMARK);
    }
}
