//! The `windows` shape, the job Apache Flink 2.3 runs at about 5.2 M records/s on this machine
//! (its DataStream window operator, heap backend, 10 s checkpoints): a counter source with event
//! time = index / 1000 ms and 100 ms bounded out-of-orderness → map `i` to `("w" + i % 1000, 1)`
//! → key by word → tumbling 1 s event-time windows → reduce (sum) → a sink that drops results.

use crate::count::Progress;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use weir::connectors::GeneratorSource;
use weir::{BoxError, SinkFunction, StreamEnv, TumblingEventTimeWindows, WatermarkStrategy};

/// Publishes the records a subtask mapped, in chunks (the hot path touches no shared line).
#[derive(Clone)]
struct Counted {
    local: u64,
    progress: Arc<Progress>,
}

const CHUNK: u64 = 1 << 16;

impl Counted {
    #[inline]
    fn tick(&mut self) {
        self.local += 1;
        if self.local == CHUNK {
            self.progress.processed.fetch_add(CHUNK, Ordering::Relaxed);
            self.local = 0;
        }
    }
}

#[derive(Clone)]
struct Drop;

impl SinkFunction<(String, u64)> for Drop {
    fn invoke(&mut self, _: (String, u64)) -> Result<(), BoxError> {
        Ok(())
    }
}

pub fn build(env: &StreamEnv, progress: &Arc<Progress>) {
    let strategy = WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(100))
        .with_timestamp_assigner(|i: &u64, _| (*i / 1000) as i64);
    let mut counted = Counted { local: 0, progress: progress.clone() };
    env.from_source(GeneratorSource::counter(), strategy)
        .uid("source")
        .map(move |i: u64| {
            counted.tick();
            (crate::word(i % 1000), 1u64)
        })
        .uid("map")
        .key_by(|r: &(String, u64)| r.0.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_secs(1)))
        .reduce(|a: (String, u64), b: (String, u64)| (a.0, a.1 + b.1))
        .uid("window")
        .sink(Drop)
        .uid("sink");
}
