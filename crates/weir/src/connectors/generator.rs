//! A deterministic generator: record `i` is `f(i)` for `i` in `0..count`, optionally rate limited.
//!
//! Its splits are residue classes: on a fresh start subtask `s` of `p` takes the split
//! `i = s, s + p, s + 2p, ...`. Each split's position is an element of a split-redistributed
//! operator list, so a restore at another parallelism deals the splits out among the new subtasks
//! (some may get several, some none) and every index is still generated exactly once. The state
//! layout is the one Weir 0.1 wrote (`{next, step}` per split), so old savepoints rescale too.

use crate::functions::{put_list, BoxError, Collector, SourceContext, SourceFunction, SourcePoll};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::metadata::Redistribution;
use weir_core::CheckpointId;
use weir_state::OperatorStateSnapshot;

const STATE: &str = "generator-position";
const BATCH: u64 = 1024;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Position {
    /// Next index this subtask generates.
    next: u64,
    /// Distance between the subtask's indices (the parallelism that wrote the position).
    step: u64,
}

#[derive(Clone)]
pub struct GeneratorSource<T> {
    generate: Arc<dyn Fn(u64) -> T + Send + Sync>,
    count: Option<u64>,
    rate_per_second: Option<f64>,
    /// This subtask's splits.
    splits: Vec<Position>,
    /// The split read next (round robin).
    cursor: usize,
    /// When rate limiting started, and the records emitted since.
    started: Option<(Instant, u64)>,
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
        GeneratorSource {
            generate: Arc::new(generate),
            count: None,
            rate_per_second: None,
            splits: Vec::new(),
            cursor: 0,
            started: None,
        }
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

impl<T: Send + 'static> SourceFunction<T> for GeneratorSource<T> {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<(), BoxError> {
        let p = ctx.parallelism as u64;
        self.splits = if ctx.state.has_list(STATE) {
            // Restored: the splits this subtask was dealt (none is possible after scaling up).
            ctx.state.list(STATE)?
        } else {
            vec![Position { next: ctx.subtask as u64, step: p }]
        };
        if let Some(bad) = self.splits.iter().find(|s| s.step == 0) {
            return Err(format!(
                "the generator source's restored split {bad:?} has step 0: the snapshot is damaged; restore from another checkpoint or savepoint"
            )
            .into());
        }
        // The rate is over all subtasks: each split (one of `step`) gets an equal share, so the
        // total stays the configured one after a rescale deals splits out unevenly.
        let share = match self.splits.first() {
            Some(first) => self.splits.len() as f64 / first.step as f64,
            None => 0.0,
        };
        self.rate_per_second = self.rate_per_second.map(|r| r * share);
        Ok(())
    }

    fn poll(&mut self, out: &mut Collector<'_, T>) -> Result<SourcePoll, BoxError> {
        let count = self.count;
        let done = |s: &Position| count.is_some_and(|c| s.next >= c);
        if self.splits.iter().all(done) {
            return Ok(SourcePoll::Exhausted);
        }
        let mut budget = BATCH;
        if let Some(rate) = self.rate_per_second {
            let (start, emitted) = *self.started.get_or_insert((Instant::now(), 0));
            let allowed = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
            if emitted >= allowed {
                return Ok(SourcePoll::Idle(Duration::from_secs_f64((1.0 / rate).min(0.05))));
            }
            budget = budget.min(allowed - emitted);
        }
        while done(&self.splits[self.cursor % self.splits.len()]) {
            self.cursor += 1;
        }
        let index = self.cursor % self.splits.len();
        let split = &mut self.splits[index];
        let mut emitted = 0;
        while emitted < budget && count.is_none_or(|c| split.next < c) {
            out.collect((self.generate)(split.next));
            split.next += split.step;
            emitted += 1;
        }
        self.cursor += 1;
        if let Some((_, total)) = &mut self.started {
            *total += emitted;
        }
        Ok(SourcePoll::More)
    }

    fn snapshot_state(&mut self, _: CheckpointId, state: &mut OperatorStateSnapshot) -> Result<(), BoxError> {
        put_list(state, STATE, Redistribution::Split, &self.splits)
    }
}
