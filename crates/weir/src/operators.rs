//! The operators behind the DataStream API, and their specs (how to instantiate one per subtask).

use crate::functions::{
    BoxError, Collector, Context, KeyedProcessFunction, RuntimeContext, SideEmitter, SinkContext, SinkFunction,
    SourceContext, SourceFunction, SourcePoll,
};
use crate::held::HeldRecords;
use crate::keyed::KeyedCore;
use crate::watermarks::{TimestampsAndWatermarks, WatermarkStrategy};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use weir_core::watermark::MAX_WATERMARK;
use weir_core::OperatorId;
use weir_runtime::channel::{erase_output, unerase_output, InputEnd, Record, SideOutputs};
use weir_runtime::graph::{Instance, NodeSpec};
use weir_runtime::metrics::OperatorMetrics;
use weir_runtime::operator::{CapturedOperator, Next, OperatorContext};
use weir_runtime::{
    ChainEvent, Control, Output, SnapshotCapture, SourceRunner, TaskEnv, TaskError, TaskResult, Timestamp,
};
use weir_state::{Key, KeyLocation, OperatorStateSnapshot, OperatorStateStore, TimeDomain};

pub(crate) fn user_error(operator: &str, e: BoxError) -> Box<TaskError> {
    let e = match e.downcast::<TaskError>() {
        Ok(task_error) => return task_error,
        Err(e) => e,
    };
    Box::new(match e.downcast::<crate::functions::Unrecoverable>() {
        Ok(u) => TaskError::Unrecoverable { operator: operator.to_string(), message: u.0 },
        Err(e) => TaskError::User { operator: operator.to_string(), message: e.to_string() },
    })
}

fn operator_state(ctx: &OperatorContext) -> OperatorStateStore {
    match &ctx.restored {
        Some(r) => OperatorStateStore::new(r.operator_lists.clone(), true),
        None => OperatorStateStore::default(),
    }
}

// ---- stateless chained operators -------------------------------------------------------------

/// Wraps a function and the downstream output into a chained operator.
pub(crate) type BuildChained<I, O, F> = fn(F, Box<dyn Output<O>>, OperatorMetrics) -> Box<dyn Output<I>>;

/// Builds a chained operator from its function and its downstream output.
pub(crate) struct ChainedSpec<I, O, F> {
    pub f: F,
    pub build: BuildChained<I, O, F>,
}

impl<I: Record, O: Record, F: Clone + Send + Sync + 'static> NodeSpec for ChainedSpec<I, O, F> {
    fn instantiate(
        &self,
        ctx: OperatorContext,
        downstream: Box<dyn Any + Send>,
        _side_outputs: SideOutputs,
    ) -> TaskResult<Instance> {
        let next = unerase_output::<O>(downstream)?;
        Ok(Instance::Operator(erase_output::<I>((self.build)(self.f.clone(), next, ctx.metrics))))
    }
}

pub(crate) struct MapOp<F, O> {
    pub f: F,
    pub next: Box<dyn Output<O>>,
    pub metrics: OperatorMetrics,
}

impl<I, O: Send, F: FnMut(I) -> O + Send> Output<I> for MapOp<F, O> {
    #[inline]
    fn emit(&mut self, record: I, timestamp: Option<Timestamp>) -> TaskResult {
        self.metrics.records_in.inc();
        self.next.emit((self.f)(record), timestamp)
    }
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.metrics.observe(event);
        self.next.event(event)
    }
}

pub(crate) struct FilterOp<F, T> {
    pub f: F,
    pub next: Box<dyn Output<T>>,
    pub metrics: OperatorMetrics,
}

impl<T: Send, F: FnMut(&T) -> bool + Send> Output<T> for FilterOp<F, T> {
    #[inline]
    fn emit(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        self.metrics.records_in.inc();
        if (self.f)(&record) {
            self.next.emit(record, timestamp)
        } else {
            Ok(())
        }
    }
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.metrics.observe(event);
        self.next.event(event)
    }
}

pub(crate) struct FlatMapOp<F, O> {
    pub f: F,
    pub next: Box<dyn Output<O>>,
    pub metrics: OperatorMetrics,
}

impl<I, O: Send, R: IntoIterator<Item = O>, F: FnMut(I) -> R + Send> Output<I> for FlatMapOp<F, O> {
    #[inline]
    fn emit(&mut self, record: I, timestamp: Option<Timestamp>) -> TaskResult {
        self.metrics.records_in.inc();
        for o in (self.f)(record) {
            self.next.emit(o, timestamp)?;
        }
        Ok(())
    }
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.metrics.observe(event);
        self.next.event(event)
    }
}

// ---- keyed process ---------------------------------------------------------------------------

/// How a keyed operator gets a record's key: computed from the record (`key_by`), or borrowed from
/// it (`key_by_ref`) and copied into a key the operator keeps, so that a `String` key costs a copy
/// into memory already held instead of an allocation and a free per record.
pub(crate) enum KeySelector<K, T> {
    Computed(Arc<dyn Fn(&T) -> K + Send + Sync>),
    Borrowed(Arc<dyn for<'a> Fn(&'a T) -> &'a K + Send + Sync>),
}

/// A record's key, as its operator holds it while the record is processed.
pub(crate) enum SelectedKey<'c, K> {
    Computed(K),
    Held(&'c K),
}

impl<K> std::ops::Deref for SelectedKey<'_, K> {
    type Target = K;
    #[inline]
    fn deref(&self) -> &K {
        match self {
            SelectedKey::Computed(k) => k,
            SelectedKey::Held(k) => k,
        }
    }
}

impl<K, T> Clone for KeySelector<K, T> {
    fn clone(&self) -> Self {
        match self {
            KeySelector::Computed(f) => KeySelector::Computed(f.clone()),
            KeySelector::Borrowed(f) => KeySelector::Borrowed(f.clone()),
        }
    }
}

impl<K: Key, T> KeySelector<K, T> {
    /// The key of `record`: computed, or borrowed and copied into `held` (reusing its memory).
    #[inline]
    pub(crate) fn select<'c>(&self, record: &T, held: &'c mut Option<K>) -> SelectedKey<'c, K> {
        match self {
            KeySelector::Computed(f) => SelectedKey::Computed(f(record)),
            KeySelector::Borrowed(f) => {
                let key = f(record);
                let held = held.get_or_insert_with(|| key.clone());
                held.clone_from(key);
                SelectedKey::Held(held)
            }
        }
    }

    /// The key's hash, which routes the record to the subtask owning its key group.
    #[inline]
    pub(crate) fn key_hash(&self, record: &T) -> i32 {
        match self {
            KeySelector::Computed(f) => f(record).key_hash(),
            KeySelector::Borrowed(f) => f(record).key_hash(),
        }
    }
}

pub(crate) struct KeyedProcessSpec<K, I, O, F> {
    pub f: F,
    pub key: KeySelector<K, I>,
    pub _types: PhantomData<fn() -> O>,
}

impl<K: Key, I: Record, O: Record, F: KeyedProcessFunction<K, I, O> + Clone + Sync> NodeSpec
    for KeyedProcessSpec<K, I, O, F>
{
    fn instantiate(
        &self,
        ctx: OperatorContext,
        downstream: Box<dyn Any + Send>,
        side_outputs: SideOutputs,
    ) -> TaskResult<Instance> {
        let next = unerase_output::<O>(downstream)?;
        let mut core = KeyedCore::<K>::new(&ctx, side_outputs, USER_TIMERS)?;
        let mut f = self.f.clone();
        let mut rc = RuntimeContext {
            backend: &mut core.backend,
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            restored: ctx.restored.is_some(),
            operator: core.name.clone(),
        };
        f.open(&mut rc).map_err(|e| user_error(&core.name, e))?;
        let op = KeyedProcessOp {
            f,
            key: self.key.clone(),
            current_key: None,
            held: HeldRecords::new(&core.backend),
            core,
            next,
            _types: PhantomData,
        };
        Ok(Instance::Operator(erase_output::<I>(Box::new(op))))
    }
}

/// The timer service of keyed process functions, named as Flink names it.
const USER_TIMERS: &str = "user-timers";

struct KeyedProcessOp<K, I, O, F> {
    f: F,
    key: KeySelector<K, I>,
    /// The current record's key (kept, so a borrowed key reuses its memory).
    current_key: Option<K>,
    /// Records held back while batching pays (see [`crate::held`]).
    held: HeldRecords<K, I>,
    core: KeyedCore<K>,
    next: Box<dyn Output<O>>,
    _types: PhantomData<fn(I)>,
}

/// Runs the function on one record of `key` (the caller counts it in `numRecordsIn`, a batch at
/// once for held records). Always inlined into the operator's `emit`: as a call
/// it cost the reference benchmark about 25 instructions per record (arguments, saved registers).
#[inline(always)]
fn process_keyed<K: Key, I: Record, O: Record, F: KeyedProcessFunction<K, I, O>>(
    f: &mut F,
    core: &mut KeyedCore<K>,
    next: &mut dyn Output<O>,
    key: &K,
    at: KeyLocation,
    record: I,
    timestamp: Option<Timestamp>,
) -> TaskResult {
    let scope = core.backend.scope_at(key, at).map_err(|e| TaskError::Internal(format!("{}: {e}", core.name)))?;
    let mut ctx = Context { scope, timestamp, domain: None, time: &core.time, side: &mut core.side };
    let mut out = Collector::new(next, timestamp);
    let result = f.process(record, &mut ctx, &mut out);
    out.finish()?;
    core.side.take_error()?;
    result.map_err(|e| user_error(&core.name, e))
}

impl<K: Key, I: Record, O: Record, F: KeyedProcessFunction<K, I, O>> KeyedProcessOp<K, I, O, F> {
    /// Fires every timer of `domain` due at `time`, earliest first; timers registered while
    /// firing fire in the same round when they are due too.
    fn fire_timers(&mut self, domain: TimeDomain, time: i64) -> TaskResult {
        while let Some(timer) = self.core.pop_timer(domain, time)? {
            let core = &mut self.core;
            let scope = core
                .backend
                .scope(&timer.key)
                .map_err(|e| TaskError::State { operator: core.name.clone(), error: e })?;
            let emitted = (domain == TimeDomain::EventTime).then_some(timer.timestamp);
            let mut ctx = Context {
                scope,
                timestamp: Some(timer.timestamp),
                domain: Some(domain),
                time: &core.time,
                side: &mut core.side,
            };
            let mut out = Collector::new(&mut *self.next, emitted);
            let result = self.f.on_timer(timer.timestamp, &mut ctx, &mut out);
            out.finish()?;
            core.side.take_error()?;
            result.map_err(|e| user_error(&core.name, e))?;
        }
        if domain == TimeDomain::ProcessingTime {
            self.core.schedule_processing_timers();
        }
        Ok(())
    }

    /// A record that arrives while no batch is open: it opens one when batching pays, and is
    /// processed right away otherwise.
    #[inline(never)]
    fn emit_outside_batch(&mut self, record: I, timestamp: Option<Timestamp>) -> TaskResult {
        if self.held.holds(&self.core.backend) {
            if self.held.push(record, timestamp) {
                return self.process_held();
            }
            return Ok(());
        }
        self.core.metrics.records_in.inc();
        let key = self.key.select(&record, &mut self.current_key);
        let at = self.core.backend.locate(&key);
        process_keyed(&mut self.f, &mut self.core, &mut *self.next, &key, at, record, timestamp)
    }

    /// Processes the held records in order, after finding their state together.
    fn process_held(&mut self) -> TaskResult {
        if self.held.is_empty() {
            return Ok(());
        }
        let core = &mut self.core;
        core.metrics.records_in.add_batch(self.held.len() as u64);
        self.held
            .find_state(&self.key, &mut core.backend)
            .map_err(|e| TaskError::State { operator: core.name.clone(), error: e })?;
        let (f, next) = (&mut self.f, &mut self.next);
        self.held.process(|key, at, record, timestamp| process_keyed(f, core, &mut **next, key, at, record, timestamp))
    }
}

impl<K: Key, I: Record, O: Record, F: KeyedProcessFunction<K, I, O>> Output<I> for KeyedProcessOp<K, I, O, F> {
    /// The usual case, a record joining an open batch, calls nothing but the batch's processing
    /// when it is full (a tail call), so it saves no registers: the rest is out of line.
    #[inline]
    fn emit(&mut self, record: I, timestamp: Option<Timestamp>) -> TaskResult {
        if self.held.is_empty() {
            return self.emit_outside_batch(record, timestamp);
        }
        if self.held.push(record, timestamp) {
            return self.process_held();
        }
        Ok(())
    }

    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.process_held()?;
        if let Some((domain, time)) = self.core.on_event(event)? {
            self.fire_timers(domain, time)?;
        }
        self.core.forward(event, &mut *self.next)
    }
}

// ---- sinks -----------------------------------------------------------------------------------

pub(crate) struct SinkSpec<T, S> {
    pub sink: S,
    pub _types: PhantomData<fn(T)>,
}

impl<T: Record, S: SinkFunction<T> + Clone + Sync> NodeSpec for SinkSpec<T, S> {
    fn instantiate(
        &self,
        ctx: OperatorContext,
        _downstream: Box<dyn Any + Send>,
        _side_outputs: SideOutputs,
    ) -> TaskResult<Instance> {
        let mut sink = self.sink.clone();
        let state = operator_state(&ctx);
        sink.open(&SinkContext {
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            state: &state,
            attempt: ctx.attempt,
        })
        .map_err(|e| user_error(&ctx.task_name(), e))?;
        let op = SinkOp {
            sink,
            operator_id: ctx.operator_id,
            name: ctx.task_name(),
            metrics: ctx.metrics.clone(),
            _types: PhantomData,
        };
        Ok(Instance::Operator(erase_output::<T>(Box::new(op))))
    }
}

struct SinkOp<T, S> {
    sink: S,
    operator_id: OperatorId,
    name: String,
    metrics: OperatorMetrics,
    _types: PhantomData<fn(T)>,
}

impl<T: Record, S: SinkFunction<T>> Output<T> for SinkOp<T, S> {
    #[inline]
    fn emit(&mut self, record: T, _timestamp: Option<Timestamp>) -> TaskResult {
        self.metrics.records_in.inc();
        self.sink.invoke(record).map_err(|e| user_error(&self.name, e))
    }

    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.metrics.observe(event);
        let name = &self.name;
        match event {
            ChainEvent::Barrier(capture) => {
                let mut st = OperatorStateSnapshot::default();
                self.sink.snapshot_state(capture.barrier.id, &mut st).map_err(|e| user_error(name, e))?;
                capture.operators.push(CapturedOperator {
                    operator_id: self.operator_id,
                    keyed: None,
                    operator_state: st,
                    watermark: None,
                });
            }
            ChainEvent::CheckpointComplete(id) => {
                self.sink.notify_checkpoint_complete(*id).map_err(|e| user_error(name, e))?
            }
            ChainEvent::EndOfData => self.sink.end_of_input().map_err(|e| user_error(name, e))?,
            ChainEvent::EndOfInput => self.sink.finish().map_err(|e| user_error(name, e))?,
            ChainEvent::CheckpointAborted(_)
            | ChainEvent::Flush
            | ChainEvent::Watermark(_)
            | ChainEvent::Status(_)
            | ChainEvent::ProcessingTime(_) => {}
        }
        Ok(())
    }
}

// ---- sources ---------------------------------------------------------------------------------

pub(crate) struct SourceSpec<T, S> {
    pub source: S,
    /// Timestamps and watermarks assigned inside the source's task (`StreamEnv::from_source`).
    pub watermarks: Option<WatermarkStrategy<T>>,
    pub _types: PhantomData<fn() -> T>,
}

impl<T: Record, S: SourceFunction<T> + Clone + Sync> NodeSpec for SourceSpec<T, S> {
    fn instantiate(
        &self,
        ctx: OperatorContext,
        downstream: Box<dyn Any + Send>,
        side_outputs: SideOutputs,
    ) -> TaskResult<Instance> {
        let mut chain = unerase_output::<T>(downstream)?;
        if let Some(strategy) = &self.watermarks {
            // Part of the source: its records are the source's output, not counted as input.
            chain = Box::new(TimestampsAndWatermarks::new(strategy, &ctx, chain, OperatorMetrics::default()));
        }
        let mut source = self.source.clone();
        let state = operator_state(&ctx);
        source
            .open(&SourceContext { subtask: ctx.subtask, parallelism: ctx.parallelism, state: &state })
            .map_err(|e| user_error(&ctx.task_name(), e))?;
        Ok(Instance::Source(Box::new(SourceTask {
            source,
            chain: SourceOutput { main: chain, side: SideEmitter { outputs: side_outputs, error: None } },
            operator_id: ctx.operator_id,
            name: ctx.task_name(),
            exhausted: false,
            suspended_for: None,
            drained: false,
        })))
    }
}

/// A source's outputs: its chain, and its side outputs, which see every event the chain sees
/// (barriers, the end of input), so their consumers align like any other.
struct SourceOutput<T> {
    main: Box<dyn Output<T>>,
    side: SideEmitter,
}

impl<T: Record> Output<T> for SourceOutput<T> {
    #[inline]
    fn emit(&mut self, record: T, timestamp: Option<i64>) -> TaskResult {
        self.main.emit(record, timestamp)
    }
    #[inline]
    fn emit_in_split(&mut self, split: weir_runtime::SplitIndex, record: T, timestamp: Option<i64>) -> TaskResult {
        self.main.emit_in_split(split, record, timestamp)
    }
    fn split_event(&mut self, event: weir_runtime::SplitEvent) -> TaskResult {
        self.main.split_event(event)
    }
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.main.event(event)?;
        self.side.outputs.event(event)
    }
}

struct SourceTask<T, S> {
    source: S,
    chain: SourceOutput<T>,
    operator_id: OperatorId,
    name: String,
    exhausted: bool,
    /// The stop-with-savepoint this source stopped for; it resumes if that savepoint is aborted.
    suspended_for: Option<weir_core::CheckpointId>,
    /// Drained (stop with `--drain`): it never reads again.
    drained: bool,
}

impl<T: Record, S: SourceFunction<T>> SourceTask<T, S> {
    /// Whether the source may read: not exhausted, not stopped for a savepoint, not drained.
    fn reading(&self) -> bool {
        !self.exhausted && self.suspended_for.is_none() && !self.drained
    }

    fn on_control(&mut self, control: Control, env: &TaskEnv) -> TaskResult<Option<InputEnd>> {
        match control {
            Control::Trigger(barrier) => {
                let mut st = OperatorStateSnapshot::default();
                self.source.snapshot_state(barrier.id, &mut st).map_err(|e| user_error(&self.name, e))?;
                let mut capture = SnapshotCapture {
                    barrier,
                    operators: vec![CapturedOperator {
                        operator_id: self.operator_id,
                        keyed: None,
                        operator_state: st,
                        watermark: None,
                    }],
                };
                let (id, stop) = (capture.barrier.id, capture.barrier.stop);
                self.chain.event(&mut ChainEvent::Barrier(&mut capture))?;
                env.submit_snapshot(capture)?;
                if stop {
                    // Nothing after a stop-with-savepoint barrier: it would be committed at the
                    // end but also replayed by a restore from that savepoint.
                    self.suspended_for = Some(id);
                    self.chain.event(&mut ChainEvent::Flush)?;
                }
                Ok(None)
            }
            Control::CheckpointAborted(id) => {
                if self.suspended_for == Some(id) {
                    self.suspended_for = None;
                }
                self.chain.event(&mut ChainEvent::CheckpointAborted(id))?;
                Ok(None)
            }
            Control::Drain => {
                if !self.drained {
                    self.drained = true;
                    // Event time ends: every event-time timer and window fires before the final
                    // savepoint, and the sinks commit the results with it.
                    self.chain.event(&mut ChainEvent::Watermark(MAX_WATERMARK))?;
                    self.chain.event(&mut ChainEvent::EndOfData)?;
                }
                Ok(None)
            }
            Control::CheckpointComplete(id) => {
                self.source.notify_checkpoint_complete(id).map_err(|e| user_error(&self.name, e))?;
                self.chain.event(&mut ChainEvent::CheckpointComplete(id))?;
                Ok(None)
            }
            other => match env.apply_common(other, &mut self.chain)? {
                Next::Continue => Ok(None),
                Next::Cancel => Ok(Some(InputEnd::Canceled)),
                Next::Finish => {
                    self.chain.event(&mut ChainEvent::EndOfInput)?;
                    Ok(Some(InputEnd::Finished))
                }
            },
        }
    }
}

impl<T: Record, S: SourceFunction<T>> SourceRunner for SourceTask<T, S> {
    fn run(&mut self, env: &mut TaskEnv) -> TaskResult<InputEnd> {
        loop {
            while let Some(c) = env.poll_control() {
                if let Some(end) = self.on_control(c, env)? {
                    return Ok(end);
                }
            }
            // Serve due wake-ups (timers, periodic watermarks of the chain) before reading or
            // waiting: a wait returns at once while one is due, so an unserved one would spin.
            env.fire_processing_time(&mut self.chain)?;
            if !self.reading() {
                if let Some(c) = env.wait_control(Duration::from_millis(200)) {
                    if let Some(end) = self.on_control(c, env)? {
                        return Ok(end);
                    }
                }
                continue;
            }
            let mut out = Collector::with_side_outputs(&mut *self.chain.main, &mut self.chain.side);
            let poll = self.source.poll(&mut out);
            out.finish()?;
            self.chain.side.take_error()?;
            match poll.map_err(|e| user_error(&self.name, e))? {
                SourcePoll::More => {}
                SourcePoll::Idle(d) => {
                    self.chain.event(&mut ChainEvent::Flush)?;
                    if let Some(c) = env.wait_control(d) {
                        if let Some(end) = self.on_control(c, env)? {
                            return Ok(end);
                        }
                    }
                }
                SourcePoll::Exhausted => {
                    // The end of a bounded input is the end of event time (as in Flink).
                    self.chain.event(&mut ChainEvent::Watermark(MAX_WATERMARK))?;
                    self.chain.event(&mut ChainEvent::Flush)?;
                    self.exhausted = true;
                    env.report_source_exhausted();
                }
            }
        }
    }
}
