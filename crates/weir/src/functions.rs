//! The functions users implement: sources, keyed process functions and sinks.

use std::time::Duration;
use weir_core::metadata::Redistribution;
use weir_core::CheckpointId;
use weir_runtime::{Output, TaskError, TaskResult};
use weir_state::{
    Key, KeyScope, KeyedStateBackend, ListState, ListStateDescriptor, MapState, MapStateDescriptor,
    OperatorStateSnapshot, OperatorStateStore, ReducingState, ReducingStateDescriptor, StateData, ValueState,
    ValueStateDescriptor,
};

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
    error: Option<TaskError>,
}

impl<'a, T> Collector<'a, T> {
    pub(crate) fn new(next: &'a mut dyn Output<T>) -> Self {
        Collector { next, error: None }
    }

    #[inline]
    pub fn collect(&mut self, record: T) {
        if self.error.is_none() {
            if let Err(e) = self.next.emit(record) {
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

/// A function over a keyed stream with keyed state. Declare state in `open`; in `process`, the
/// `state` scope is the current key's.
pub trait KeyedProcessFunction<K, I, O>: Send + 'static {
    fn open(&mut self, _ctx: &mut RuntimeContext<'_, K>) -> Result<(), BoxError> {
        Ok(())
    }
    fn process(&mut self, value: I, state: &mut KeyScope<'_, K>, out: &mut Collector<'_, O>) -> Result<(), BoxError>;
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
