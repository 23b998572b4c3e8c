//! The benchmarks' keyed function: a count per key in `ValueState<u64>`, with progress shared
//! with the measuring thread (published in chunks, so the hot path touches no shared cache line).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use weir::{BoxError, Collector, Context, KeyedProcessFunction, RuntimeContext, ValueState, ValueStateDescriptor};

const CHUNK: u64 = 1 << 16;

/// What the measuring thread sees.
pub struct Progress {
    /// Records processed, in chunks of 65536 per subtask.
    pub processed: AtomicU64,
    /// Microseconds from `clock` to the first record any subtask processed (0: none yet).
    pub first_record_us: AtomicU64,
    pub clock: Instant,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress { processed: AtomicU64::new(0), first_record_us: AtomicU64::new(0), clock: Instant::now() })
    }
}

#[derive(Clone)]
pub struct Count<K> {
    state: Option<ValueState<u64>>,
    local: u64,
    seen_any: bool,
    progress: Arc<Progress>,
    _key: std::marker::PhantomData<fn(K)>,
}

impl<K> Count<K> {
    pub fn new(progress: Arc<Progress>) -> Self {
        Count { state: None, local: 0, seen_any: false, progress, _key: std::marker::PhantomData }
    }
}

impl<K: weir::Key, T: Send + 'static> KeyedProcessFunction<K, T, ()> for Count<K> {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, K>) -> Result<(), BoxError> {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    #[inline]
    fn process(&mut self, _: T, ctx: &mut Context<'_, K>, _: &mut Collector<'_, ()>) -> Result<(), BoxError> {
        let h = self.state.ok_or("not opened")?;
        let n = h.value(ctx)?.unwrap_or(0);
        h.update(ctx, n + 1)?;
        if !self.seen_any {
            self.seen_any = true;
            let at = self.progress.clock.elapsed().as_micros().max(1) as u64;
            let _ = self.progress.first_record_us.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.local += 1;
        if self.local == CHUNK {
            self.progress.processed.fetch_add(CHUNK, Ordering::Relaxed);
            self.local = 0;
        }
        Ok(())
    }
}

/// Starts the savepoint benchmarks' job: `source` (parallelism 1) → key_by → [`Count`] (max
/// parallelism 128, so restores can rescale it).
pub fn start_keyed_count<K, S>(
    config: weir::Configuration,
    source: S,
    progress: &Arc<Progress>,
    name: &str,
) -> anyhow::Result<weir::JobHandle>
where
    S: weir::Source<u64, K>,
{
    let env = weir::StreamEnv::with_config(config);
    env.source(source)
        .uid("source")
        .set_parallelism(1)
        .key_by(|k: &u64| *k)
        .process::<(), _>(Count::<u64>::new(progress.clone()))
        .uid("count")
        .set_max_parallelism(128);
    Ok(env.execute_async(name)?)
}
