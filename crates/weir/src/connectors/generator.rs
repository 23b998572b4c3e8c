//! A deterministic generator: record `i` is `f(i)` for `i` in `0..count`, optionally rate limited.
//!
//! A split source whose splits are residue classes: on a fresh start at parallelism `p` there are
//! `p` splits, split `r` generating `i = r, r + p, r + 2p, ...`. A restore at another parallelism
//! deals the splits out among the new subtasks (some may get several, some none) and every index
//! is still generated exactly once. A split's state is `{next, step}` as Weir 0.1 wrote it;
//! snapshots from before split sources (the split-redistributed list `generator-position`) restore
//! and rescale too.

use crate::functions::{BoxError, Collector, SourcePoll};
use crate::split_source::{LegacySplits, SourceSplit, SplitContext, SplitReader, SplitSource};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::CheckpointId;
use weir_runtime::SplitIndex;
use weir_state::OperatorStateStore;

/// The list older versions kept positions in (split-redistributed).
const LEGACY_STATE: &str = "generator-position";
const BATCH: u64 = 1024;

/// A residue class of indices and the next one to generate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct GeneratorSplit {
    /// Next index this split generates.
    next: u64,
    /// Distance between the split's indices (the parallelism of the job's first run).
    step: u64,
}

impl GeneratorSplit {
    fn residue(&self) -> u64 {
        self.next % self.step
    }
}

impl SourceSplit for GeneratorSplit {
    fn split_id(&self) -> String {
        format!("{}/{}", self.residue(), self.step)
    }
}

type Generate<T> = Arc<dyn Fn(u64) -> T + Send + Sync>;

pub struct GeneratorSource<T> {
    generate: Generate<T>,
    count: Option<u64>,
    rate_per_second: Option<f64>,
}

impl<T> Clone for GeneratorSource<T> {
    fn clone(&self) -> Self {
        GeneratorSource { generate: self.generate.clone(), count: self.count, rate_per_second: self.rate_per_second }
    }
}

impl GeneratorSource<u64> {
    /// Emits `0, 1, 2, ...`.
    pub fn counter() -> Self {
        Self::new(|i| i)
    }
}

impl GeneratorSource<(u64, u64)> {
    /// Emits `(key, i)` with `key = i % keys`: a keyed stream with `keys` distinct keys.
    pub fn keyed(keys: u64) -> Self {
        let keys = keys.max(1);
        Self::new(move |i| (i % keys, i))
    }
}

impl<T> GeneratorSource<T> {
    pub fn new(generate: impl Fn(u64) -> T + Send + Sync + 'static) -> Self {
        GeneratorSource { generate: Arc::new(generate), count: None, rate_per_second: None }
    }

    /// Stops after `count` records in total (a bounded source); unbounded by default.
    pub fn with_count(mut self, count: u64) -> Self {
        self.count = Some(count);
        self
    }

    /// Limits the rate, in records per second over all subtasks.
    pub fn with_rate(mut self, records_per_second: f64) -> Self {
        self.rate_per_second = Some(records_per_second);
        self
    }
}

impl<T: Send + 'static> SplitSource<T> for GeneratorSource<T> {
    type Split = GeneratorSplit;
    type Reader = GeneratorReader<T>;

    /// The residue classes of the first run's parallelism; none later (they are all there is).
    fn discover(&mut self, ctx: &SplitContext, initial: bool) -> Result<Vec<GeneratorSplit>, BoxError> {
        let p = u64::from(ctx.parallelism);
        Ok(if initial { (0..p).map(|r| GeneratorSplit { next: r, step: p }).collect() } else { Vec::new() })
    }

    /// Residue `r` goes to subtask `r % p`: one split per subtask at the first run's parallelism.
    fn owner(&self, split: &GeneratorSplit, parallelism: u32) -> u32 {
        (split.residue() % u64::from(parallelism.max(1))) as u32
    }

    fn create_reader(&self, _: &SplitContext) -> Result<GeneratorReader<T>, BoxError> {
        Ok(GeneratorReader {
            generate: self.generate.clone(),
            count: self.count,
            rate_per_second: self.rate_per_second,
            rate: None,
            splits: Vec::new(),
            cursor: 0,
            started: None,
        })
    }

    fn restore_legacy(&self, state: &OperatorStateStore) -> Result<Option<LegacySplits<GeneratorSplit>>, BoxError> {
        if !state.has_list(LEGACY_STATE) {
            return Ok(None);
        }
        Ok(Some(LegacySplits::Dealt(state.list(LEGACY_STATE)?)))
    }
}

/// One split being generated.
struct Reading {
    index: SplitIndex,
    split: GeneratorSplit,
    finished_reported: bool,
}

pub struct GeneratorReader<T> {
    generate: Generate<T>,
    count: Option<u64>,
    rate_per_second: Option<f64>,
    /// This reader's share of the rate: each split (one of `step`) gets an equal share, so the
    /// total stays the configured one after a rescale deals splits out unevenly.
    rate: Option<f64>,
    splits: Vec<Reading>,
    /// The split read next (round robin).
    cursor: usize,
    /// When rate limiting started, and the records emitted since.
    started: Option<(Instant, u64)>,
}

impl<T> GeneratorReader<T> {
    fn done(&self, split: &GeneratorSplit) -> bool {
        self.count.is_some_and(|c| split.next >= c)
    }
}

impl<T: Send + 'static> SplitReader<T, GeneratorSplit> for GeneratorReader<T> {
    fn add_splits(&mut self, splits: Vec<(SplitIndex, GeneratorSplit)>) -> Result<(), BoxError> {
        if let Some((_, bad)) = splits.iter().find(|(_, s)| s.step == 0) {
            return Err(format!(
                "the generator source's restored split {bad:?} has step 0: the snapshot is damaged; restore from another checkpoint or savepoint"
            )
            .into());
        }
        self.splits.extend(splits.into_iter().map(|(index, split)| Reading { index, split, finished_reported: false }));
        let share: f64 = self.splits.iter().map(|r| 1.0 / r.split.step as f64).sum();
        self.rate = self.rate_per_second.map(|r| r * share);
        self.started = None;
        Ok(())
    }

    fn poll(&mut self, out: &mut Collector<'_, T>) -> Result<SourcePoll, BoxError> {
        for i in 0..self.splits.len() {
            if !self.splits[i].finished_reported && self.done(&self.splits[i].split) {
                self.splits[i].finished_reported = true;
                out.split_finished(self.splits[i].index);
            }
        }
        if self.splits.iter().all(|r| r.finished_reported) {
            return Ok(SourcePoll::Exhausted);
        }
        let mut budget = BATCH;
        if let Some(rate) = self.rate {
            let (start, emitted) = *self.started.get_or_insert((Instant::now(), 0));
            let allowed = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
            if emitted >= allowed {
                return Ok(SourcePoll::Idle(Duration::from_secs_f64((1.0 / rate).min(0.05))));
            }
            budget = budget.min(allowed - emitted);
        }
        while self.splits[self.cursor % self.splits.len()].finished_reported {
            self.cursor += 1;
        }
        let at = self.cursor % self.splits.len();
        let count = self.count;
        let reading = &mut self.splits[at];
        let split = &mut reading.split;
        let mut emitted = 0;
        while emitted < budget && count.is_none_or(|c| split.next < c) {
            out.collect_in_split(reading.index, (self.generate)(split.next), None);
            split.next += split.step;
            emitted += 1;
        }
        self.cursor += 1;
        if let Some((_, total)) = &mut self.started {
            *total += emitted;
        }
        Ok(SourcePoll::More)
    }

    fn snapshot(&mut self, _: CheckpointId) -> Result<Vec<GeneratorSplit>, BoxError> {
        Ok(self.splits.iter().map(|r| r.split).collect())
    }
}
