//! What operators and tasks share: the `Output` chain, the events that travel along it, and the
//! task environment a source drives.

use crate::protocol::MasterMsg;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_core::coordinator::TaskKey;
use weir_core::metadata::{OperatorListState, SnapshotKind};
pub use weir_core::watermark::Timestamp;
use weir_core::{CheckpointId, KeyGroupRange, OperatorId};
use weir_state::{KeyedSnapshot, OperatorStateSnapshot, StateError};

/// What every operator call returns, once per record on the hot path. The error is boxed so
/// that the result fits a register: as a 104-byte value it was written to memory and copied on
/// every `emit` of a chain (about 4 % of the reference benchmark's time).
pub type TaskResult<T = ()> = Result<T, Box<TaskError>>;

const _: () = assert!(std::mem::size_of::<TaskResult>() == std::mem::size_of::<usize>());

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// An error returned by user code, with the operator that raised it.
    #[error("operator '{operator}': {message}")]
    User { operator: String, message: String },
    /// A failure that restarting cannot fix (bad input, a missing committed file): the job fails
    /// at once instead of restarting.
    #[error("operator '{operator}': {message}")]
    Unrecoverable { operator: String, message: String },
    /// Restored state could not be read or decoded.
    #[error("restoring operator '{operator}': {error}")]
    Restore { operator: String, error: StateError },
    #[error("operator '{operator}': {error}")]
    State { operator: String, error: StateError },
    #[error("operator '{operator}': I/O error: {error}")]
    Io { operator: String, error: std::io::Error },
    /// A channel to another task closed: that task is gone (cancellation or failure).
    #[error("a connected task has stopped")]
    Disconnected,
    #[error("internal error: {0}")]
    Internal(String),
}

/// The downstream side of an operator: the next operator of the chain, a network writer, or a
/// fan-out to several of them.
pub trait Output<T>: Send {
    /// A record, with its event timestamp when it has one.
    fn emit(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult;
    /// Handles a control event, then passes it on down the chain.
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult;
    /// A record a split source read from one of its splits. A source's watermark strategy keeps
    /// event time per split (a fast partition does not push the watermark past a slow one's
    /// records); every other operator treats it as [`Output::emit`].
    #[inline]
    fn emit_in_split(&mut self, _split: SplitIndex, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        self.emit(record, timestamp)
    }
    /// A split source's splits came or went; only a source's watermark strategy listens.
    fn split_event(&mut self, _event: SplitEvent) -> TaskResult {
        Ok(())
    }
}

/// A split's number within one source subtask (not persisted: splits are persisted by id).
pub type SplitIndex = u32;

/// What a split source tells its watermark strategy about its splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitEvent {
    /// The subtask started reading a split.
    Added(SplitIndex),
    /// A split has no more records.
    Finished(SplitIndex),
    /// The source reads splits and has announced the ones it has: from now on event time is the
    /// minimum over its unfinished splits, and the stream is idle while it has none (Flink's
    /// readers without splits mark themselves idle). Sent after the first splits' `Added`, so the
    /// stream is never idle for an instant before them (which would let event time jump past
    /// their records).
    Reading,
}

impl<T, O: Output<T> + ?Sized> Output<T> for Box<O> {
    #[inline]
    fn emit(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        (**self).emit(record, timestamp)
    }
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        (**self).event(event)
    }
    #[inline]
    fn emit_in_split(&mut self, split: SplitIndex, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        (**self).emit_in_split(split, record, timestamp)
    }
    fn split_event(&mut self, event: SplitEvent) -> TaskResult {
        (**self).split_event(event)
    }
}

/// Events that travel down a chain, in order with the records.
pub enum ChainEvent<'a> {
    /// A checkpoint or savepoint barrier: capture state into the capture, then pass it on.
    Barrier(&'a mut SnapshotCapture),
    CheckpointComplete(CheckpointId),
    CheckpointAborted(CheckpointId),
    /// The input has no data right now: send partial batches downstream.
    Flush,
    /// The operator's input watermark advanced (the minimum over its active input channels):
    /// event-time timers up to it fire, then it goes on down the chain.
    Watermark(Timestamp),
    /// The input became idle or active again (watermarks of idle inputs are not waited for).
    Status(WatermarkStatus),
    /// The task's clock reached a wake-up an operator asked for (processing-time timers, periodic
    /// watermarks): the current time, in milliseconds since the epoch.
    ProcessingTime(Timestamp),
    /// No more records will come, but the stream stays open for a final barrier (stop with
    /// `--drain`): operators run their end-of-input hooks.
    EndOfData,
    /// The stream ends: no more records and no more barriers; tasks finish after this.
    EndOfInput,
}

/// Whether a stream carries watermarks at the moment (Flink's `WatermarkStatus`): an idle stream's
/// event time is not waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkStatus {
    Active,
    Idle,
}

/// The wake-ups a task's operators asked for: processing-time timers and periodic watermark
/// emission. The task's loop sends [`ChainEvent::ProcessingTime`] down the chain when the earliest
/// one falls due; operators then ask again for their next one. One per task, shared by its
/// operators (all on the task's thread).
#[derive(Debug, Clone)]
pub struct ProcessingTimeService {
    next: Arc<AtomicI64>,
}

impl Default for ProcessingTimeService {
    fn default() -> Self {
        ProcessingTimeService { next: Arc::new(AtomicI64::new(i64::MAX)) }
    }
}

impl ProcessingTimeService {
    /// Wall-clock time in milliseconds since the epoch.
    pub fn now(&self) -> Timestamp {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        since.as_millis() as Timestamp
    }

    /// Asks for a [`ChainEvent::ProcessingTime`] at `at` (or as soon as possible when it is past).
    pub fn request_wakeup(&self, at: Timestamp) {
        self.next.fetch_min(at, Ordering::Relaxed);
    }

    /// When a wake-up is due: clears it and returns the current time.
    fn take_due(&self) -> Option<Timestamp> {
        let next = self.next.load(Ordering::Relaxed);
        if next == i64::MAX {
            return None;
        }
        let now = self.now();
        if now < next {
            return None;
        }
        self.next.store(i64::MAX, Ordering::Relaxed);
        Some(now)
    }

    /// How long until the next wake-up, if one is requested.
    fn time_to_wakeup(&self) -> Option<Duration> {
        let next = self.next.load(Ordering::Relaxed);
        (next != i64::MAX).then(|| Duration::from_millis(next.saturating_sub(self.now()).max(0) as u64))
    }
}

/// A barrier as it travels between tasks.
#[derive(Debug, Clone)]
pub struct Barrier {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub timestamp_ms: u64,
    /// Directory the snapshot's files go to (`chk-<id>` or the savepoint directory).
    pub location: Arc<weir_core::location::SnapshotUri>,
    /// A stop-with-savepoint barrier: sources emit nothing after it unless it is aborted.
    pub stop: bool,
    /// A checkpoint that must not reference files of earlier snapshots (after a NO_CLAIM restore).
    pub full: bool,
}

impl Barrier {
    /// What this barrier asks of a keyed backend.
    pub fn snapshot_request(&self) -> weir_state::SnapshotRequest {
        weir_state::SnapshotRequest { id: self.id, kind: self.kind, full: self.full }
    }
}

/// One operator's state captured at a barrier.
pub struct CapturedOperator {
    pub operator_id: OperatorId,
    pub keyed: Option<KeyedSnapshot>,
    pub operator_state: OperatorStateSnapshot,
    /// The operator's event time at the barrier, if it has one.
    pub watermark: Option<Timestamp>,
}

impl CapturedOperator {
    /// The watermark a snapshot records: none before event time started, and none at its end
    /// (after a bounded input or a drain), so a job restored from a drained savepoint processes
    /// new records instead of finding them all late.
    pub fn restorable_watermark(watermark: Timestamp) -> Option<Timestamp> {
        use weir_core::watermark::{MAX_WATERMARK, MIN_WATERMARK};
        (watermark > MIN_WATERMARK && watermark < MAX_WATERMARK).then_some(watermark)
    }

    /// Records `watermark` as `operator`'s: on its own capture if the chain already captured
    /// that operator (a source and its watermark strategy), else on a new one.
    pub fn record_watermark(capture: &mut SnapshotCapture, operator: OperatorId, watermark: Timestamp) {
        let watermark = Self::restorable_watermark(watermark);
        match capture.operators.iter_mut().find(|o| o.operator_id == operator) {
            Some(op) => op.watermark = watermark,
            None => capture.operators.push(CapturedOperator {
                operator_id: operator,
                keyed: None,
                operator_state: OperatorStateSnapshot::default(),
                watermark,
            }),
        }
    }
}

/// Everything a task captured at one barrier; written asynchronously.
pub struct SnapshotCapture {
    pub barrier: Barrier,
    pub operators: Vec<CapturedOperator>,
}

/// What the job master tells a task.
#[derive(Debug, Clone)]
pub enum Control {
    /// All tasks are initialized: start processing.
    Start,
    /// Sources only: inject this barrier.
    Trigger(Barrier),
    CheckpointComplete(CheckpointId),
    CheckpointAborted(CheckpointId),
    /// Sources only: the input is over (after the final checkpoint): end the stream.
    FinishSource,
    /// Sources only: stop reading and send end-of-data downstream (stop with `--drain`).
    Drain,
    Cancel,
}

/// Restored state for one operator subtask, with state file paths resolved.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    pub keyed: weir_state::RestoredKeyedState,
    pub operator_lists: Vec<OperatorListState>,
    /// Where the subtask's event time starts (`weir.watermarks.restore`).
    pub watermark: Option<Timestamp>,
}

/// What an operator knows about itself when it is instantiated for a subtask.
#[derive(Debug, Clone)]
pub struct OperatorContext {
    pub operator_id: OperatorId,
    pub name: String,
    pub uid: Option<String>,
    pub subtask: u32,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
    /// `Some` when the job (re)started from a snapshot, even if this operator had no state in it.
    pub restored: Option<RestoredState>,
    /// 0 for the first deployment, +1 for every restart.
    pub attempt: u32,
    pub job_id: weir_core::JobId,
    /// The keyed state backend (`state.backend.type`).
    pub state_backend: weir_state::StateBackend,
    /// The task's wake-ups (shared by the operators of its chain).
    pub processing_time: ProcessingTimeService,
    /// `pipeline.auto-watermark-interval`: how often watermark generators emit; `None` when 0.
    pub auto_watermark_interval: Option<Duration>,
    /// Where the operator counts its records in (see [`crate::metrics`]).
    pub metrics: crate::metrics::OperatorMetrics,
}

impl OperatorContext {
    /// Display name with the subtask, as logs show it: `Sum (2/4)`.
    pub fn task_name(&self) -> String {
        format!("{} ({}/{})", self.name, self.subtask + 1, self.parallelism)
    }
}

/// A source task's main loop, provided by the API layer.
pub trait SourceRunner: Send {
    fn run(&mut self, env: &mut TaskEnv) -> TaskResult<crate::channel::InputEnd>;
}

/// What a running task uses to talk to the job master and its snapshot writer.
pub struct TaskEnv {
    pub(crate) key: TaskKey,
    pub(crate) attempt: u32,
    pub(crate) control: Receiver<Control>,
    pub(crate) master: Sender<MasterMsg>,
    pub(crate) snapshots: Sender<SnapshotCapture>,
    pub(crate) processing_time: ProcessingTimeService,
}

/// What a source does next.
pub enum Next {
    Continue,
    Finish,
    Cancel,
}

impl TaskEnv {
    pub fn subtask(&self) -> u32 {
        self.key.subtask
    }

    /// A control message, if one is waiting.
    pub fn poll_control(&self) -> Option<Control> {
        self.control.try_recv().ok()
    }

    /// Sends [`ChainEvent::ProcessingTime`] down `chain` when a wake-up is due.
    pub fn fire_processing_time<T>(&self, chain: &mut dyn Output<T>) -> TaskResult {
        match self.processing_time.take_due() {
            Some(now) => chain.event(&mut ChainEvent::ProcessingTime(now)),
            None => Ok(()),
        }
    }

    /// How long the task may wait for input: until the next wake-up, at most `limit`.
    pub fn time_to_wakeup(&self, limit: Option<Duration>) -> Option<Duration> {
        match (self.processing_time.time_to_wakeup(), limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Waits up to `timeout` (less when a wake-up falls due earlier) for a control message.
    pub fn wait_control(&self, timeout: Duration) -> Option<Control> {
        let timeout = self.time_to_wakeup(Some(timeout)).unwrap_or(timeout);
        match self.control.recv_timeout(timeout) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Control::Cancel),
        }
    }

    /// Hands a capture to the snapshot writer, which writes it and acknowledges.
    pub fn submit_snapshot(&self, capture: SnapshotCapture) -> TaskResult {
        self.snapshots.send(capture).map_err(|_| TaskError::Internal("snapshot writer stopped".into()).into())
    }

    /// Tells the job master that this source has no more input.
    pub fn report_source_exhausted(&self) {
        let _ = self.master.send(MasterMsg::SourceExhausted { attempt: self.attempt, task: self.key });
    }

    /// Applies a control message that every task handles the same way: completion and abort
    /// notifications go down the chain. Returns what the caller should do next.
    pub fn apply_common<T>(&self, control: Control, chain: &mut dyn Output<T>) -> TaskResult<Next> {
        match control {
            Control::CheckpointComplete(id) => chain.event(&mut ChainEvent::CheckpointComplete(id))?,
            Control::CheckpointAborted(id) => chain.event(&mut ChainEvent::CheckpointAborted(id))?,
            Control::FinishSource => return Ok(Next::Finish),
            Control::Cancel => return Ok(Next::Cancel),
            Control::Start | Control::Trigger(_) | Control::Drain => {}
        }
        Ok(Next::Continue)
    }
}
