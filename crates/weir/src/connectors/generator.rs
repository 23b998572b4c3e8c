//! A deterministic generator: record `i` is `f(i)` for `i` in `0..count`, optionally rate limited.
//! Subtask `s` of `p` generates `i = s, s + p, s + 2p, ...`; its position is operator state.

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
    position: Position,
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
            position: Position { next: 0, step: 1 },
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
        let restored: Vec<Position> = ctx.state.list(STATE)?;
        self.position = match restored.as_slice() {
            [] => Position { next: ctx.subtask as u64, step: p },
            [pos] if pos.step == p => *pos,
            _ => {
                return Err(format!(
                    "the generator source's position was written at parallelism {} and cannot be restored at parallelism {p}; restore it with -p {}",
                    restored.first().map(|r| r.step).unwrap_or(0),
                    restored.first().map(|r| r.step).unwrap_or(0)
                )
                .into())
            }
        };
        self.rate_per_second = self.rate_per_second.map(|r| r / p as f64);
        Ok(())
    }

    fn poll(&mut self, out: &mut Collector<'_, T>) -> Result<SourcePoll, BoxError> {
        let Position { next, step } = self.position;
        if self.count.is_some_and(|c| next >= c) {
            return Ok(SourcePoll::Exhausted);
        }
        let mut budget = BATCH;
        if let Some(rate) = self.rate_per_second {
            let (start, emitted_at_start) = *self.started.get_or_insert((Instant::now(), next));
            let allowed = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
            let emitted = (next - emitted_at_start) / step;
            if emitted >= allowed {
                return Ok(SourcePoll::Idle(Duration::from_secs_f64((1.0 / rate).min(0.05))));
            }
            budget = budget.min(allowed - emitted);
        }
        let mut i = next;
        for _ in 0..budget {
            if self.count.is_some_and(|c| i >= c) {
                break;
            }
            out.collect((self.generate)(i));
            i += step;
        }
        self.position.next = i;
        Ok(SourcePoll::More)
    }

    fn snapshot_state(&mut self, _: CheckpointId, state: &mut OperatorStateSnapshot) -> Result<(), BoxError> {
        put_list(state, STATE, Redistribution::Split, &[self.position])
    }
}
