//! The functions users implement: sources, keyed process functions and sinks.

use std::marker::PhantomData;
use std::time::Duration;
use weir_core::metadata::Redistribution;
use weir_core::CheckpointId;
use weir_runtime::channel::{Record, SideOutputs};
use weir_runtime::{Output, ProcessingTimeService, SplitEvent, SplitIndex, TaskError, TaskResult};
use weir_state::{
    Key, KeyScope, KeyedStateBackend, ListState, ListStateDescriptor, MapState, MapStateDescriptor,
    OperatorStateSnapshot, OperatorStateStore, ReducingState, ReducingStateDescriptor, StateData, ValueState,
    ValueStateDescriptor,
};
use weir_state::{TimeDomain, TimerServiceId};

/// The error type user functions return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure that restarting the job cannot fix (bad input, a file that is gone): returned by a
/// function, it fails the job at once, whatever the restart strategy, instead of restarting it
/// again and again. Flink's equivalent is `SuppressRestartsException`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unrecoverable(pub String);

impl Unrecoverable {
    pub fn boxed(message: impl Into<String>) -> BoxError {
        Box::new(Unrecoverable(message.into()))
    }
}

/// Where a function emits records. Errors from downstream are kept and raised once the function
/// returns, so `collect` needs no `?`.
pub struct Collector<'a, T> {
    next: &'a mut dyn Output<T>,
    /// The event timestamp records get: the input record's (or the event-time timer's), as Flink's
    /// `TimestampedCollector` does.
    timestamp: Option<i64>,
    error: Option<Box<TaskError>>,
    /// A source's side outputs (keyed functions emit theirs through their `Context`).
    side: Option<&'a mut SideEmitter>,
}

impl<'a, T> Collector<'a, T> {
    pub(crate) fn new(next: &'a mut dyn Output<T>, timestamp: Option<i64>) -> Self {
        Collector { next, timestamp, error: None, side: None }
    }

    pub(crate) fn with_side_outputs(next: &'a mut dyn Output<T>, side: &'a mut SideEmitter) -> Self {
        Collector { next, timestamp: None, error: None, side: Some(side) }
    }

    /// Emits `value` to the side output `tag` of a source (read with `get_side_output(&tag)` on
    /// the source's stream; nothing happens when nothing reads it). Keyed functions use
    /// `ctx.output(&tag, value)` instead.
    pub fn output<X: Record>(&mut self, tag: &OutputTag<X>, value: X) {
        if self.error.is_some() {
            return;
        }
        let Some(side) = self.side.as_deref_mut() else {
            self.error = Some(Box::new(TaskError::Internal(format!(
                "side output '{}': a keyed function emits side outputs with ctx.output(&tag, value)",
                tag.id
            ))));
            return;
        };
        if let Some(out) = side.outputs.get::<X>(&tag.id) {
            if let Err(e) = out.emit(value, None) {
                self.error = Some(e);
            }
        }
    }

    /// Emits a record, with the timestamp of the record (or event-time timer) being processed.
    #[inline]
    pub fn collect(&mut self, record: T) {
        let timestamp = self.timestamp;
        self.collect_with_timestamp(record, timestamp);
    }

    /// Emits a record with an explicit event timestamp (`None`: without one). Sources use it to
    /// stamp records with their event time (Flink's `collectWithTimestamp`).
    #[inline]
    pub fn collect_with_timestamp(&mut self, record: T, timestamp: Option<i64>) {
        if self.error.is_none() {
            if let Err(e) = self.next.emit(record, timestamp) {
                self.error = Some(e);
            }
        }
    }

    /// Emits a record a split reader read from split `split` (see [`crate::SplitReader`]), with
    /// its event timestamp if it has one: the source's watermark strategy keeps event time per
    /// split.
    #[inline]
    pub fn collect_in_split(&mut self, split: SplitIndex, record: T, timestamp: Option<i64>) {
        if self.error.is_none() {
            if let Err(e) = self.next.emit_in_split(split, record, timestamp) {
                self.error = Some(e);
            }
        }
    }

    /// Split `split` has no more records: event time no longer waits for it.
    pub fn split_finished(&mut self, split: SplitIndex) {
        self.split_event(SplitEvent::Finished(split));
    }

    pub(crate) fn split_event(&mut self, event: SplitEvent) {
        if self.error.is_none() {
            if let Err(e) = self.next.split_event(event) {
                self.error = Some(e);
            }
        }
    }

    pub(crate) fn finish(self) -> TaskResult {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a source does after a `poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// More records may be ready right away.
    More,
    /// Nothing to read now; poll again after this long (control messages are still served).
    Idle(Duration),
    /// The input is over (bounded sources).
    Exhausted,
}

/// What a source subtask knows when it opens.
pub struct SourceContext<'a> {
    pub subtask: u32,
    pub parallelism: u32,
    /// Operator state restored from a snapshot (empty on a fresh start).
    pub state: &'a OperatorStateStore,
}

/// A source. One instance per subtask (cloned from the one given to the job).
pub trait SourceFunction<T>: Send + 'static {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<(), BoxError>;
    /// Emits a bounded number of records, so the task can serve barriers in between.
    fn poll(&mut self, out: &mut Collector<'_, T>) -> Result<SourcePoll, BoxError>;
    /// Captures the position (offsets) at a barrier.
    fn snapshot_state(
        &mut self,
        checkpoint_id: CheckpointId,
        state: &mut OperatorStateSnapshot,
    ) -> Result<(), BoxError>;
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        Ok(())
    }
    /// Whether the source keeps state (a stateful operator needs a uid when auto uids are off).
    fn is_stateful(&self) -> bool {
        true
    }
}

/// What a keyed function gets when it opens: state registration and where it runs.
pub struct RuntimeContext<'a, K> {
    pub(crate) backend: &'a mut KeyedStateBackend<K>,
    pub(crate) subtask: u32,
    pub(crate) parallelism: u32,
    pub(crate) restored: bool,
    pub(crate) operator: String,
}

impl<K: Key> RuntimeContext<'_, K> {
    pub fn subtask(&self) -> u32 {
        self.subtask
    }
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }
    /// True when the job (re)started from a checkpoint or savepoint.
    pub fn is_restored(&self) -> bool {
        self.restored
    }
    fn state_err(&self, e: weir_state::StateError) -> BoxError {
        Box::new(TaskError::Restore { operator: self.operator.clone(), error: e })
    }
    pub fn value_state<T: StateData>(&mut self, d: &ValueStateDescriptor<T>) -> Result<ValueState<T>, BoxError> {
        self.backend.value_state(d).map_err(|e| self.state_err(e))
    }
    pub fn list_state<T: StateData>(&mut self, d: &ListStateDescriptor<T>) -> Result<ListState<T>, BoxError> {
        self.backend.list_state(d).map_err(|e| self.state_err(e))
    }
    pub fn map_state<UK: StateData + Ord, UV: StateData>(
        &mut self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>, BoxError> {
        self.backend.map_state(d).map_err(|e| self.state_err(e))
    }
    pub fn reducing_state<T: StateData>(
        &mut self,
        d: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>, BoxError> {
        self.backend.reducing_state(d).map_err(|e| self.state_err(e))
    }
}

/// A function over a keyed stream with keyed state and timers (Flink's `KeyedProcessFunction`).
/// Declare state in `open`. In `process`, `ctx` is the current key's state scope (state handles
/// take it: `count.value(ctx)`), and gives the record's timestamp, the timer service and side
/// outputs.
pub trait KeyedProcessFunction<K, I, O>: Send + 'static {
    fn open(&mut self, _ctx: &mut RuntimeContext<'_, K>) -> Result<(), BoxError> {
        Ok(())
    }
    fn process(&mut self, value: I, ctx: &mut Context<'_, K>, out: &mut Collector<'_, O>) -> Result<(), BoxError>;
    /// A timer of the current key (`ctx.key()`) fired at `timestamp`; `ctx.time_domain()` says
    /// which kind. Records emitted from an event-time timer carry its timestamp.
    fn on_timer(
        &mut self,
        _timestamp: i64,
        _ctx: &mut Context<'_, K>,
        _out: &mut Collector<'_, O>,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Identifies a side output: records of type `T` a function emits beside its main output
/// (`ctx.output(&tag, value)`), consumed with `get_side_output(&tag)`. Tags are equal when their
/// ids are.
pub struct OutputTag<T> {
    id: String,
    _type: PhantomData<fn() -> T>,
}

impl<T> OutputTag<T> {
    pub fn new(id: impl Into<String>) -> Self {
        OutputTag { id: id.into(), _type: PhantomData }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        OutputTag::new(self.id.clone())
    }
}

/// An operator's event time and clock, and the timer service its function uses.
pub(crate) struct OperatorTime {
    /// The operator's current input watermark.
    pub watermark: i64,
    pub processing: ProcessingTimeService,
    pub timers: TimerServiceId,
}

/// Side outputs, and the first error emitting to one raised (reported once the function returns).
pub(crate) struct SideEmitter {
    pub outputs: SideOutputs,
    pub error: Option<Box<TaskError>>,
}

impl SideEmitter {
    pub(crate) fn take_error(&mut self) -> TaskResult {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a keyed function sees while it handles a record or a timer: the current key's state
/// (it dereferences to the [`KeyScope`] state handles take), the timestamp, timers and side
/// outputs.
pub struct Context<'a, K> {
    pub(crate) scope: KeyScope<'a, K>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) domain: Option<TimeDomain>,
    pub(crate) time: &'a OperatorTime,
    pub(crate) side: &'a mut SideEmitter,
}

impl<'a, K: Key> Context<'a, K> {
    /// The record's event timestamp (the timer's time in `on_timer`); `None` for a record without.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// In `on_timer`, the kind of timer that fired; `None` in `process`.
    pub fn time_domain(&self) -> Option<TimeDomain> {
        self.domain
    }

    /// Timers of the current key, and the operator's time.
    pub fn timer_service(&mut self) -> TimerService<'_, 'a, K> {
        TimerService { ctx: self }
    }

    /// Emits `value` to the side output `tag` (nothing happens when no operator consumes it).
    pub fn output<T: Record>(&mut self, tag: &OutputTag<T>, value: T) {
        if self.side.error.is_some() {
            return;
        }
        if let Some(out) = self.side.outputs.get::<T>(&tag.id) {
            if let Err(e) = out.emit(value, self.timestamp) {
                self.side.error = Some(e);
            }
        }
    }
}

impl<'a, K> std::ops::Deref for Context<'a, K> {
    type Target = KeyScope<'a, K>;
    fn deref(&self) -> &Self::Target {
        &self.scope
    }
}

impl<K> std::ops::DerefMut for Context<'_, K> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.scope
    }
}

/// Timers of the current key (Flink's `TimerService`). Timers are keyed state: registering the
/// same time twice keeps one timer, and timers are in every checkpoint and savepoint.
pub struct TimerService<'c, 'a, K> {
    ctx: &'c mut Context<'a, K>,
}

impl<K: Key> TimerService<'_, '_, K> {
    /// The operator's current event time: the minimum watermark of its inputs.
    pub fn current_watermark(&self) -> i64 {
        self.ctx.time.watermark
    }

    /// The wall-clock time in milliseconds since the epoch.
    pub fn current_processing_time(&self) -> i64 {
        self.ctx.time.processing.now()
    }

    /// Calls `on_timer` once the watermark reaches `timestamp`.
    pub fn register_event_time_timer(&mut self, timestamp: i64) -> Result<(), BoxError> {
        self.change(TimeDomain::EventTime, timestamp, true)
    }

    /// Calls `on_timer` once the wall clock reaches `timestamp` (ms since the epoch); right after
    /// a restore when it fell due while the job was down.
    pub fn register_processing_time_timer(&mut self, timestamp: i64) -> Result<(), BoxError> {
        self.change(TimeDomain::ProcessingTime, timestamp, true)?;
        self.ctx.time.processing.request_wakeup(timestamp);
        Ok(())
    }

    pub fn delete_event_time_timer(&mut self, timestamp: i64) -> Result<(), BoxError> {
        self.change(TimeDomain::EventTime, timestamp, false)
    }

    pub fn delete_processing_time_timer(&mut self, timestamp: i64) -> Result<(), BoxError> {
        self.change(TimeDomain::ProcessingTime, timestamp, false)
    }

    fn change(&mut self, domain: TimeDomain, timestamp: i64, add: bool) -> Result<(), BoxError> {
        let service = self.ctx.time.timers;
        let scope = &mut self.ctx.scope;
        let result = if add {
            scope.register_timer(service, domain, timestamp, &[])
        } else {
            scope.delete_timer(service, domain, timestamp, &[])
        };
        result.map_err(|e| Box::new(e) as BoxError)
    }
}

/// What a sink subtask knows when it opens.
pub struct SinkContext<'a> {
    pub subtask: u32,
    pub parallelism: u32,
    pub state: &'a OperatorStateStore,
    /// 0 on the job's first deployment, +1 after every restart.
    pub attempt: u32,
}

/// A sink. One instance per subtask. Exactly-once sinks pre-commit in `snapshot_state` and commit
/// in `notify_checkpoint_complete` (two-phase commit).
pub trait SinkFunction<T>: Send + 'static {
    fn open(&mut self, _ctx: &SinkContext<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    fn invoke(&mut self, value: T) -> Result<(), BoxError>;
    fn snapshot_state(
        &mut self,
        _checkpoint_id: CheckpointId,
        _state: &mut OperatorStateSnapshot,
    ) -> Result<(), BoxError> {
        Ok(())
    }
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        Ok(())
    }
    /// No more records will come, but a final savepoint follows (stop with `--drain`): flush
    /// anything buffered. Do not commit: the savepoint's completion does.
    fn end_of_input(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    /// The stream ended: flush and commit what remains.
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    fn is_stateful(&self) -> bool {
        false
    }
}

/// Helper for sources and sinks: store one list of items under a name.
pub fn put_list<T: StateData>(
    state: &mut OperatorStateSnapshot,
    name: &str,
    mode: Redistribution,
    items: &[T],
) -> Result<(), BoxError> {
    state.put_list(name, mode, items).map_err(|e| Box::new(e) as BoxError)
}
