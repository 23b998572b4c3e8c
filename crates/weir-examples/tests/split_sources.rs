//! Split sources through the public API: per-split event time, splits discovered while the job
//! runs, and their positions surviving rescaled restores.

mod common;

use common::wait_for;
use common::Collect;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir::{
    BoxError, CheckpointId, Collector, Context, KeyedProcessFunction, RuntimeContext, SourcePoll, SourceSplit,
    SplitContext, SplitIndex, SplitReader, SplitSource, WatermarkStrategy,
};

/// Split `id` holds records `(id, 0..len)`, with event time `position * pace`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Range {
    id: u64,
    next: u64,
    len: u64,
    pace: i64,
}

impl SourceSplit for Range {
    fn split_id(&self) -> String {
        format!("range-{}", self.id)
    }
}

/// Splits `0..available` (a shared counter, so a test can add splits while the job runs), each
/// `len` records long; `per_poll[id]` records of split `id` are read per poll (so splits progress
/// at different speeds).
#[derive(Clone)]
struct Ranges {
    available: Arc<AtomicU64>,
    len: u64,
    paces: Vec<i64>,
    per_poll: Vec<u64>,
    /// A pause after each poll (slows the splits down).
    pause: Option<Duration>,
    discovery: Option<Duration>,
}

impl Ranges {
    fn split(&self, id: u64) -> Range {
        let at = id as usize % self.paces.len();
        Range { id, next: 0, len: self.len, pace: self.paces[at] }
    }
}

struct RangeReader {
    splits: Vec<(SplitIndex, Range, bool)>,
    per_poll: Vec<u64>,
    pause: Option<Duration>,
}

impl SplitSource<(u64, u64)> for Ranges {
    type Split = Range;
    type Reader = RangeReader;

    fn discover(&mut self, _: &SplitContext, _initial: bool) -> Result<Vec<Range>, BoxError> {
        Ok((0..self.available.load(Ordering::SeqCst)).map(|id| self.split(id)).collect())
    }

    fn discovery_interval(&self) -> Option<Duration> {
        self.discovery
    }

    fn create_reader(&self, _: &SplitContext) -> Result<RangeReader, BoxError> {
        Ok(RangeReader { splits: Vec::new(), per_poll: self.per_poll.clone(), pause: self.pause })
    }
}

impl SplitReader<(u64, u64), Range> for RangeReader {
    fn add_splits(&mut self, splits: Vec<(SplitIndex, Range)>) -> Result<(), BoxError> {
        self.splits.extend(splits.into_iter().map(|(i, r)| (i, r, false)));
        Ok(())
    }

    fn poll(&mut self, out: &mut Collector<'_, (u64, u64)>) -> Result<SourcePoll, BoxError> {
        let mut emitted = false;
        for (index, range, reported) in &mut self.splits {
            let batch = self.per_poll[range.id as usize % self.per_poll.len()];
            for _ in 0..batch {
                if range.next >= range.len {
                    break;
                }
                out.collect_in_split(*index, (range.id, range.next), Some(range.next as i64 * range.pace));
                range.next += 1;
                emitted = true;
            }
            if range.next >= range.len && !*reported {
                *reported = true;
                out.split_finished(*index);
            }
        }
        Ok(if emitted {
            self.pause.map_or(SourcePoll::More, SourcePoll::Idle)
        } else if self.splits.iter().all(|s| s.2) {
            SourcePoll::Exhausted
        } else {
            SourcePoll::Idle(Duration::from_millis(5))
        })
    }

    fn snapshot(&mut self, _: CheckpointId) -> Result<Vec<Range>, BoxError> {
        Ok(self.splits.iter().map(|s| s.1.clone()).collect())
    }
}

/// Emits `late <split> <position>` for a record at or below the current watermark, else
/// `<split> <position>`.
#[derive(Clone)]
struct FlagLate;

impl KeyedProcessFunction<u64, (u64, u64), String> for FlagLate {
    fn open(&mut self, _: &mut RuntimeContext<'_, u64>) -> Result<(), BoxError> {
        Ok(())
    }
    fn process(
        &mut self,
        r: (u64, u64),
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        let late = ctx.timestamp().is_some_and(|ts| ts <= ctx.timer_service().current_watermark());
        out.collect(format!("{}{} {}", if late { "late " } else { "" }, r.0, r.1));
        Ok(())
    }
}

fn all_records(splits: u64, len: u64) -> Vec<String> {
    let mut want: Vec<String> = (0..splits).flat_map(|s| (0..len).map(move |i| format!("{s} {i}"))).collect();
    want.sort();
    want
}

#[test]
fn each_split_keeps_its_own_event_time_so_a_slow_split_is_never_late() {
    // Two splits in one subtask: split 0 races ahead in event time (100 ms per record, 100 records
    // per poll), split 1 crawls (1 ms per record, 1 per poll, a poll per millisecond). One
    // watermark for the whole subtask would follow split 0 and make nearly every record of split
    // 1 late.
    let env = common::test_env(&[("pipeline.auto-watermark-interval", "1 ms")]);
    let ranges = Ranges {
        available: Arc::new(AtomicU64::new(2)),
        len: 300,
        paces: vec![100, 1],
        per_poll: vec![100, 1],
        pause: Some(Duration::from_millis(1)),
        discovery: None,
    };
    let sink = Collect::default();
    env.from_source(ranges, WatermarkStrategy::for_monotonous_timestamps())
        .set_parallelism(1)
        .key_by(|r: &(u64, u64)| r.0)
        .process(FlagLate)
        .set_parallelism(1)
        .sink(sink.clone());
    env.execute("per-split").unwrap();
    let mut got = sink.lines();
    let late = got.iter().filter(|l| l.starts_with("late")).count();
    assert_eq!(late, 0, "records of the slow split were late: {:?}", &got[..got.len().min(3)]);
    got.sort();
    assert_eq!(got, all_records(2, 300));
}

backend_tests! {
    fn splits_discovered_while_running_are_read_from_their_start_and_survive_rescaling(backend) {
        // p=2 with 2 splits, 3 more appear while it runs; stopped with a savepoint mid-way; p=3,
        // where a sixth appears; stopped mid-way again; p=1 to the end. Every record of every
        // split arrives exactly once.
        let dir = tempfile::tempdir().unwrap();
        let available = Arc::new(AtomicU64::new(2));
        let ranges = Ranges {
            available: available.clone(),
            len: 300,
            paces: vec![1],
            per_poll: vec![3],
            pause: Some(Duration::from_millis(5)),
            discovery: Some(Duration::from_millis(20)),
        };
        let sink = Collect::default();
        let mut savepoint = None;
        // (parallelism, records before adding splits, splits then, records before stopping)
        for (round, (p, grow_at, splits, stop_at)) in [(2u32, 150, 5u64, 700), (3, 900, 6, 1300), (1, 0, 6, 1800)].into_iter().enumerate() {
            let parallelism = format!("parallelism.default={p}");
            let env = common::job_env(backend, dir.path(), savepoint.as_deref(), &[parallelism.as_str()]);
            env.source(ranges.clone())
                .uid("ranges")
                .map(|r: (u64, u64)| format!("{} {}", r.0, r.1))
                .sink(sink.clone())
                .uid("sink");
            let s = sink.clone();
            let count = move || s.lines().len();
            let handle = env.execute_async("discovery").unwrap();
            wait_for("records before new splits", || count() >= grow_at);
            available.store(splits, Ordering::SeqCst);
            wait_for("records of the new splits", || count() >= stop_at);
            let sp = dir.path().join(format!("sp{round}"));
            savepoint = Some(common::stop_with_savepoint(handle, &sp, backend.savepoint_format(), false));
            assert!(round == 2 || count() < 1800, "round {round} read everything: the test stops too late");
        }
        let mut got = sink.lines();
        got.sort();
        let want = all_records(6, 300);
        assert!(got == want, "{}", common::diff(&got, &want));
    }
}
