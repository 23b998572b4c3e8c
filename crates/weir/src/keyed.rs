//! What every keyed operator (process functions, windows) shares: its state backend, its timer
//! service, its event time and clock, its side outputs, and the way it answers barriers,
//! checkpoint completions and watermarks.

use crate::functions::{OperatorTime, SideEmitter};
use weir_core::watermark::MIN_WATERMARK;
use weir_core::OperatorId;
use weir_runtime::channel::SideOutputs;
use weir_runtime::operator::{CapturedOperator, OperatorContext};
use weir_runtime::{ChainEvent, Output, TaskError, TaskResult};
use weir_state::{FiredTimer, Key, KeyedStateBackend, OperatorStateSnapshot, StateError, StoreContext, TimeDomain};

pub(crate) struct KeyedCore<K> {
    pub backend: KeyedStateBackend<K>,
    pub time: OperatorTime,
    pub side: SideEmitter,
    operator_id: OperatorId,
    /// The subtask's display name, with the operator's uid: what errors name.
    pub name: String,
    /// The stop-with-savepoint this operator passed: until it is aborted no timer fires, since
    /// the savepoint holds the timers and the job restored from it fires them.
    suspended_for: Option<weir_core::CheckpointId>,
    pub metrics: weir_runtime::metrics::OperatorMetrics,
}

impl<K: Key> KeyedCore<K> {
    /// Creates the subtask's keyed state backend (restoring its state) and its timer service
    /// `timer_service`. Processing-time timers that fell due while the job was down are
    /// scheduled to fire right away.
    pub fn new(ctx: &OperatorContext, side_outputs: SideOutputs, timer_service: &str) -> TaskResult<Self> {
        let name = match &ctx.uid {
            Some(uid) => format!("{} (uid '{uid}')", ctx.task_name()),
            None => ctx.task_name(),
        };
        let restore_error = |error| TaskError::Restore { operator: name.clone(), error };
        let store_ctx = StoreContext {
            native_metrics: ctx.metrics.native.clone(),
            job_id: ctx.job_id,
            operator_id: ctx.operator_id,
            operator: name.clone(),
            subtask: ctx.subtask,
            max_parallelism: ctx.max_parallelism,
            key_groups: ctx.key_groups,
        };
        let restored = ctx.restored.as_ref().map(|r| r.keyed.clone()).unwrap_or_default();
        let mut backend =
            KeyedStateBackend::create(&ctx.state_backend, &store_ctx, &restored).map_err(restore_error)?;
        let timers = backend.timer_service(timer_service).map_err(restore_error)?;
        // A restored subtask's event time starts where the snapshot's was (`weir.watermarks.restore`).
        let watermark = ctx.restored.as_ref().and_then(|r| r.watermark).unwrap_or(MIN_WATERMARK);
        let time = OperatorTime { watermark, processing: ctx.processing_time.clone(), timers };
        let core = KeyedCore {
            backend,
            time,
            side: SideEmitter { outputs: side_outputs, error: None },
            operator_id: ctx.operator_id,
            name,
            suspended_for: None,
            metrics: ctx.metrics.clone(),
        };
        core.schedule_processing_timers();
        Ok(core)
    }

    /// A restored state the operator declares does not fit the snapshot.
    pub fn restore_error(&self, error: StateError) -> Box<TaskError> {
        Box::new(TaskError::Restore { operator: self.name.clone(), error })
    }

    pub fn state_error(&self, error: StateError) -> Box<TaskError> {
        Box::new(TaskError::State { operator: self.name.clone(), error })
    }

    /// Removes and returns the earliest timer of `domain` due at `time`.
    pub fn pop_timer(&mut self, domain: TimeDomain, time: i64) -> TaskResult<Option<FiredTimer<K>>> {
        let popped = self.backend.pop_due_timer(self.time.timers, domain, time);
        popped.map_err(|e| self.state_error(e))
    }

    /// Asks the task to wake up when the earliest processing-time timer falls due.
    pub fn schedule_processing_timers(&self) {
        if let Some(at) = self.backend.next_timer(self.time.timers, TimeDomain::ProcessingTime) {
            self.time.processing.request_wakeup(at);
        }
    }

    /// Handles what every keyed operator handles the same way — a barrier snapshots the keyed
    /// state (timers included), a completed checkpoint reaches the backend, a watermark becomes
    /// the current event time — and returns the timers' time domain and time to fire, if the
    /// event makes some due.
    pub fn on_event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult<Option<(TimeDomain, i64)>> {
        self.metrics.observe(event);
        match event {
            ChainEvent::Barrier(capture) => {
                let keyed = self
                    .backend
                    .snapshot(&capture.barrier.snapshot_request())
                    .map_err(|e| TaskError::Internal(format!("{}: snapshot of keyed state failed: {e}", self.name)))?;
                capture.operators.push(CapturedOperator {
                    operator_id: self.operator_id,
                    keyed: Some(keyed),
                    operator_state: OperatorStateSnapshot::default(),
                    watermark: CapturedOperator::restorable_watermark(self.time.watermark),
                });
                if capture.barrier.stop {
                    self.suspended_for = Some(capture.barrier.id);
                }
                Ok(None)
            }
            ChainEvent::CheckpointAborted(id) if self.suspended_for == Some(*id) => {
                // The stop failed: the job goes on, and so do its timers.
                self.suspended_for = None;
                self.schedule_processing_timers();
                Ok(Some((TimeDomain::EventTime, self.time.watermark)))
            }
            ChainEvent::CheckpointComplete(id) => {
                self.backend.checkpoint_complete(*id);
                Ok(None)
            }
            // Event time never goes back, not even behind a restored watermark.
            ChainEvent::Watermark(w) if *w <= self.time.watermark => Ok(None),
            ChainEvent::Watermark(w) => {
                self.time.watermark = *w;
                Ok(self.suspended_for.is_none().then_some((TimeDomain::EventTime, *w)))
            }
            ChainEvent::ProcessingTime(now) if self.suspended_for.is_none() => {
                Ok(Some((TimeDomain::ProcessingTime, *now)))
            }
            _ => Ok(None),
        }
    }

    /// Passes an event on to the side outputs and the main output.
    pub fn forward<O>(&mut self, event: &mut ChainEvent<'_>, next: &mut dyn Output<O>) -> TaskResult {
        self.side.outputs.event(event)?;
        next.event(event)
    }
}
