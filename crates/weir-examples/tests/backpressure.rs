//! A slow sink backpressures the job: the source slows down instead of memory growing, and
//! checkpoints still complete (barriers queue behind the data, aligned).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::connectors::GeneratorSource;
use weir::{BoxError, Configuration, SinkFunction, StreamEnv};

#[derive(Clone)]
struct SlowSink {
    received: Arc<AtomicU64>,
}

impl SinkFunction<String> for SlowSink {
    fn invoke(&mut self, _: String) -> Result<(), BoxError> {
        self.received.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(200));
        Ok(())
    }
}

#[test]
fn slow_sink_bounds_in_flight_records_and_checkpoints_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (batch, capacity, parallelism) = (64u64, 4u64, 2u64);
    let mut c = Configuration::new();
    for (k, v) in [
        ("execution.checkpointing.interval", "100 ms"),
        ("execution.checkpointing.dir", dir.path().to_str().unwrap()),
        ("weir.network.batch-size", &batch.to_string()),
        ("weir.network.channel-capacity", &capacity.to_string()),
        ("parallelism.default", &parallelism.to_string()),
    ] {
        c.set(k, v).unwrap();
    }
    let env = StreamEnv::with_config(c);
    let emitted = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let counter = emitted.clone();
    env.source(GeneratorSource::keyed(100))
        .uid("source")
        .map(move |r: (u64, u64)| {
            counter.fetch_add(1, Ordering::SeqCst);
            r
        })
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a: (u64, u64), b: (u64, u64)| (a.0, a.1 + b.1))
        .uid("sum")
        .map(|(k, v): (u64, u64)| format!("{k} {v}"))
        .sink(SlowSink { received: received.clone() })
        .uid("slow-sink");
    let handle = env.execute_async("backpressure").unwrap();

    // What can be in flight: per channel `capacity` batches plus one being filled and one being
    // processed, for every producer/consumer pair of the keyed exchange, and the records each
    // keyed subtask holds back to process together (up to 1024 on the heap backend).
    let held_back = 1024;
    let bound = parallelism * parallelism * (capacity + 2) * batch + parallelism * (batch + held_back);
    let started = Instant::now();
    let mut max_in_flight = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let r = received.load(Ordering::SeqCst);
        let e = emitted.load(Ordering::SeqCst);
        max_in_flight = max_in_flight.max(e.saturating_sub(r));
        std::thread::sleep(Duration::from_millis(2));
    }
    let completed = handle.completed_checkpoints().len();
    let (e, r) = (emitted.load(Ordering::SeqCst), received.load(Ordering::SeqCst));
    handle.cancel();
    handle.wait();
    assert!(completed >= 3, "checkpoints must complete under backpressure, got {completed}");
    assert!(max_in_flight <= bound, "in flight {max_in_flight} exceeds the bound {bound}");
    // Without backpressure the generator would have emitted millions in 3 s.
    assert!(e < r + bound && e < 100_000, "source was not slowed: emitted {e}, received {r}");
}
